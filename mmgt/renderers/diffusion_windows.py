"""Overlapping latent windows for stage 2: the official offline scheme and live continuation.

* **Offline** (official ``pipeline_pose2vid_long``, mmgt_official §4.9): the whole clip's latents
  are denoised together; at every step each 12-frame window (stride 8, overlap 4) predicts v for
  its frames, predictions are averaged per frame (plain mean), then one scheduler step runs on
  the full clip. ``closed_loop`` wraps the last window around to the first frames as the
  official code does (meant for looping animation); off, the last window ends at the clip end.
* **Live** (:func:`sample_continuation`): a window = C committed frames (clean latents of frames
  already emitted) + N new frames. At every step the committed frames are replaced by their
  forward-diffused copy at that step's noise level (fixed noise per window), so the new frames
  are denoised in agreement with what was already shown; the committed latents themselves are
  never changed, decoded or re-encoded. This is the replacement method of SMGA's continuation
  applied in latent space; it needs no retraining because the motion modules already see
  12-frame windows whose frames are all at one noise level.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mmgt.schedulers.video import DDIMSampler

# (window latents (B, 4, F, h, w), timestep, frame indices) → v-prediction of the same shape
Denoise = Callable[[Tensor, int, Sequence[int]], Tensor]


def context_windows(
    frames: int, window: int = 12, overlap: int = 4, closed_loop: bool = True
) -> list[list[int]]:
    """Frame indices of each window (official: starts 0, 8, 16, … < frames, taken mod frames)."""
    if frames <= window:
        return [list(range(frames))]
    stride = window - overlap
    if closed_loop:
        return [[(s + k) % frames for k in range(window)] for s in range(0, frames, stride)]
    starts = list(range(0, frames - window, stride)) + [frames - window]
    return [list(range(s, s + window)) for s in starts]


@torch.no_grad()
def sample_offline(
    denoise: Denoise,
    noise: Tensor,  # (B, 4, L, h, w) initial latents (unit Gaussian)
    sampler: DDIMSampler,
    steps: int,
    windows: list[list[int]],
) -> Tensor:
    """Denoise a whole clip with overlapping windows; returns the clean latents (B, 4, L, h, w)."""
    latents = noise * sampler.init_noise_sigma
    frames = latents.shape[2]
    counts = torch.zeros(frames, dtype=latents.dtype, device=latents.device)
    for idx in windows:
        counts[idx] += 1
    counts = counts.view(1, 1, frames, 1, 1)
    for t in sampler.set_timesteps(steps):
        v = torch.zeros_like(latents)
        for idx in windows:
            v[:, :, idx] += denoise(latents[:, :, idx], int(t), idx)
        latents = sampler.step(v / counts, int(t), latents)
    return latents


@torch.no_grad()
def sample_continuation(
    denoise: Denoise,
    noise: Tensor,  # (B, 4, C + N, h, w) unit Gaussian for the whole window
    sampler: DDIMSampler,
    steps: int,
    committed: Tensor | None = None,  # (B, 4, C, h, w) clean latents of emitted frames
) -> Tensor:
    """Denoise one live window whose first C frames are fixed; returns its clean latents."""
    c = 0 if committed is None else committed.shape[2]
    index = list(range(noise.shape[2]))
    latents = noise * sampler.init_noise_sigma
    for t in sampler.set_timesteps(steps):
        if c:
            latents[:, :, :c] = sampler.add_noise(committed, noise[:, :, :c], int(t))
        latents = sampler.step(denoise(latents, int(t), index), int(t), latents)
    if c:
        latents[:, :, :c] = committed
    return latents
