"""Diffusion maths (pure functions of tensors; no I/O): the pose schedule and samplers."""
