"""Diffusion maths for SMGA (x0-prediction over pose sequences).

Notation (paper → code): ᾱ_t → ``alphas_cumprod[t]``, x_t → ``x``, x̂0 → ``x0``, ε̂ → ``eps``,
σ_t → ``sigma``, η → ``eta``, w (guidance weight) → ``guidance``.

* :class:`CosineSchedule` — the official cosine schedule (s = 0.008, T = 1000, β ≤ 0.999),
  computed in float64 and then, as in the official code, turned into float32 β whose
  cumulative product is taken in float32.
* :func:`ddim_time_pairs` — the official step pairs ``int(linspace(−1, T − 1, n + 1))``
  reversed: (999, 979), …, (19, −1) for 50 steps; any step count works (2–8 for live use).
* :func:`ddim_sample` — DDIM with η (official: 50 steps, η = 1, x̂0 clamped to [−1, 1]); the
  last pair returns x̂0. The denoiser is passed in as a function, so this module holds no model.
* **Continuation**: ``known`` fixes the first C frames of the window to frames already emitted.
  x_T's known frames start as the known frames noised to level T, and at every step the known
  frames replace the model's x̂0 before the update. With x0-prediction that keeps x_t's known
  frames exactly on the forward trajectory of the known poses (√ᾱ_t·known + √(1 − ᾱ_t)·ε_t,
  with the sampler's own ε_t), so the network always sees a context consistent with its noise
  level, and the new frames are denoised jointly with it: consecutive windows join without a
  seam, and the first C output frames equal ``known`` exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from mmgt.schedulers import TRAIN_TIMESTEPS

Denoiser = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, T, F), t (B,)) → x̂0 (B, T, F)
NoiseFn = Callable[[tuple[int, ...]], Tensor]  # shape → standard normal noise


class CosineSchedule:
    """The official cosine noise schedule and its derived float32 buffers."""

    def __init__(self, timesteps: int = TRAIN_TIMESTEPS, s: float = 0.008) -> None:
        steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps + s
        alphas = np.cos(steps / (1 + s) * np.pi / 2) ** 2
        alphas = alphas / alphas[0]
        betas = np.clip(1 - alphas[1:] / alphas[:-1], 0, 0.999)
        self.timesteps = timesteps
        self.betas = torch.tensor(betas, dtype=torch.float32)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # float32, as official
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / self.alphas_cumprod - 1)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε for per-sample steps ``t`` (B,)."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_alphas_cumprod.to(x0.device)[t].view(shape)
        b = self.sqrt_one_minus_alphas_cumprod.to(x0.device)[t].view(shape)
        return a * x0 + b * noise

    def eps_from_x0(self, x: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """ε̂ = (x_t/√ᾱ_t − x̂0) / √(1/ᾱ_t − 1)."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        r = self.sqrt_recip_alphas_cumprod.to(x.device)[t].view(shape)
        rm1 = self.sqrt_recipm1_alphas_cumprod.to(x.device)[t].view(shape)
        return (r * x - x0) / rm1


def ddim_time_pairs(steps: int, timesteps: int = TRAIN_TIMESTEPS) -> list[tuple[int, int]]:
    """Official DDIM step pairs: (t, t_next) from T − 1 down to (…, −1)."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"steps must be in [1, {timesteps}], got {steps}")
    times = torch.linspace(-1, timesteps - 1, steps=steps + 1).int().tolist()[::-1]
    return list(zip(times[:-1], times[1:], strict=True))


def ddim_sample(
    denoise: Denoiser,
    schedule: CosineSchedule,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    eta: float = 1.0,
    clip: bool = True,
    noise: NoiseFn | None = None,
    generator: torch.Generator | None = None,
    known: Tensor | None = None,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Sample a (B, T, F) sequence with DDIM.

    Args:
        denoise: x̂0 predictor (guidance already applied), called once per step.
        schedule: the noise schedule.
        shape: (B, T, F).
        steps, eta, clip: DDIM step count, stochasticity, and x̂0 clamping to [−1, 1].
        noise: optional source of the standard-normal draws (initial x_T, then one per step
            except the last), e.g. to replay recorded noise; defaults to ``torch.randn``.
        generator: RNG for the default noise source.
        known: (B, C, F) frames already emitted; the first C frames are continued from them.
    """
    draw: NoiseFn = noise or (
        lambda s: torch.randn(s, generator=generator, device=device, dtype=torch.float32)
    )
    acp = schedule.alphas_cumprod
    pairs = ddim_time_pairs(steps, schedule.timesteps)
    x = draw(tuple(shape)).to(device)
    c = 0 if known is None else known.shape[1]
    if c:
        t0 = torch.full((shape[0],), pairs[0][0], dtype=torch.long, device=device)
        x[:, :c] = schedule.q_sample(known.to(x), t0, x[:, :c])
    for t, t_next in pairs:
        tt = torch.full((shape[0],), t, dtype=torch.long, device=device)
        x0 = denoise(x, tt)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        if c:
            x0 = torch.cat([known.to(x0), x0[:, c:]], dim=1)
        eps = schedule.eps_from_x0(x, tt, x0)
        if t_next < 0:
            x = x0
            continue
        alpha, alpha_next = acp[t], acp[t_next]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        coef = (1 - alpha_next - sigma**2).sqrt()
        x = x0 * alpha_next.sqrt() + coef * eps + sigma * draw(tuple(shape)).to(device)
    return x
