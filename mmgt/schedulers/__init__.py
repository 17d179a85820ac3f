"""Diffusion maths (pure functions of tensors; no I/O): the pose schedule and samplers."""

from __future__ import annotations

import math

from mmgt.errors import InputError

TRAIN_TIMESTEPS = 1000  # both stages' schedules (T)


def check_sampling(what: str, steps: int, guidance: float, eta: float | None = None) -> None:
    """Refuse sampler settings that would fail deep inside sampling or silently do something
    else (a NaN guidance weight disables guidance, an η above 1 makes DDIM's noise term NaN)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= TRAIN_TIMESTEPS:
        raise InputError(f"{what} steps must be an integer in 1..{TRAIN_TIMESTEPS}, got {steps!r}")
    if not (math.isfinite(guidance) and guidance >= 0):
        raise InputError(f"{what} guidance must be a finite number ≥ 0, got {guidance!r}")
    if eta is not None and not 0 <= eta <= 1:
        raise InputError(f"{what} DDIM eta must be in [0, 1], got {eta!r}")
