"""Stage-2 video diffusion maths: zero-SNR v-prediction schedule and DDIM (no diffusers needed).

Notation (paper → code): ᾱ_t → ``alphas_cumprod[t]``, x_t → ``sample``, x̂0 → ``x0``, ε̂ → ``eps``,
v → ``v``, σ_t(η) → ``std``, w (guidance) → ``scale``, T → ``num_train_timesteps``.

The official stage 2 samples with diffusers' ``DDIMScheduler`` (linear β 0.00085–0.012, zero
terminal SNR, v-prediction, trailing spacing, steps_offset 1, 30 steps, η = 0, CFG 3.5); training
used the same with ``scaled_linear`` β. This module reproduces those numbers:

* **Schedule**: float32 β → zero-terminal-SNR rescale (Lin et al. 2023, Alg. 1) → ᾱ = cumprod(1 − β)
  in float32, in the same order of operations as diffusers, so ᾱ agree bitwise. ᾱ_{T−1} = 0
  exactly: x_{T−1} is pure noise, and v-prediction there gives x̂0 = −v (ε-prediction is
  ill-posed at t = T−1).
* **Timesteps**: trailing / leading / linspace spacing (Lin et al. Table 2). Trailing starts at
  t = T − 1, which with zero SNR is what makes 2–4-step sampling valid (it starts from pure noise).
* **DDIM step**: the previous step is t − T // n, with ᾱ_prev = 1 below 0 (diffusers' rule). With
  trailing spacing and n ∤ T it lands next to the listed timestep (30 steps: 966 → 933, list has
  932); the official sampler does exactly this, so it is kept.
* **Training**: ``add_noise``, the v target ``velocity`` and Min-SNR-γ weights (``min_snr_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mmgt.schedulers import TRAIN_TIMESTEPS

Spacing = Literal["trailing", "leading", "linspace"]
Timestep = int | Tensor  # a Python int / 0-dim tensor, or per-sample steps (B,)


@dataclass(frozen=True)
class VideoScheduleConfig:
    """DDIM configuration; the defaults are the official stage-2 inference settings."""

    num_train_timesteps: int = TRAIN_TIMESTEPS
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear"] = "linear"
    prediction_type: Literal["v_prediction", "epsilon"] = "v_prediction"
    rescale_betas_zero_snr: bool = True
    timestep_spacing: Spacing = "trailing"
    steps_offset: int = 1  # only used by "leading" spacing
    clip_sample: bool = False  # clamp x̂0 to [−1, 1]
    set_alpha_to_one: bool = True  # ᾱ_prev of the last step: 1, else ᾱ_0
    num_inference_steps: int = 30
    eta: float = 0.0
    guidance_scale: float = 3.5

    @classmethod
    def training(cls) -> VideoScheduleConfig:
        """The official training schedule: as inference, but ``scaled_linear`` β."""
        return replace(cls(), beta_schedule="scaled_linear")


def make_betas(config: VideoScheduleConfig) -> Tensor:
    """β (T,) float32: linear, or linear in √β then squared; then optionally zero-SNR rescaled."""
    c, n = config, config.num_train_timesteps
    if c.beta_schedule == "linear":
        betas = torch.linspace(c.beta_start, c.beta_end, n, dtype=torch.float32)
    elif c.beta_schedule == "scaled_linear":
        betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, n, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"unknown beta_schedule {c.beta_schedule!r}")
    return rescale_zero_terminal_snr(betas) if c.rescale_betas_zero_snr else betas


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale √ᾱ so √ᾱ_{T−1} = 0 while √ᾱ_0 is kept; return the matching β (T,)."""
    root = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    acp = root**2
    alphas = torch.cat([acp[:1], acp[1:] / acp[:-1]])  # undo the cumulative product
    return 1 - alphas


def timesteps(
    num_steps: int,
    spacing: Spacing = "trailing",
    num_train_timesteps: int = TRAIN_TIMESTEPS,
    steps_offset: int = 1,
) -> Tensor:
    """Descending int64 timesteps (num_steps,) as diffusers' ``set_timesteps``.

    trailing: T = 1000, n = 30 → 999, 966, 932, …, 32; n = 4 → 999, 749, 499, 249.
    (For some n diffusers' trailing list gets a spurious extra −1; it is not reproduced.)
    """
    n_train = num_train_timesteps
    if not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be in [1, {n_train}], got {num_steps}")
    if spacing == "trailing":
        ts = np.round(np.arange(n_train, 0, -n_train / num_steps))[:num_steps] - 1
    elif spacing == "leading":
        ts = (np.arange(num_steps) * (n_train // num_steps)).round()[::-1] + steps_offset
    elif spacing == "linspace":
        ts = np.linspace(0, n_train - 1, num_steps).round()[::-1]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}")
    return torch.from_numpy(ts.astype(np.int64))


def guided(v_uncond: Tensor, v_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance v_u + w·(v_c − v_u); ``scale <= 1`` means no CFG (returns v_c)."""
    return v_cond if scale <= 1.0 else v_uncond + scale * (v_cond - v_uncond)


class VideoSchedule:
    """The float32 ᾱ buffers plus the stateless DDIM / training maths on them."""

    def __init__(self, config: VideoScheduleConfig | None = None) -> None:
        self.config = config or VideoScheduleConfig()
        self.betas = make_betas(self.config)  # (T,)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,), [-1] == 0 if zero-SNR
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.set_alpha_to_one else self.alphas_cumprod[0]
        )

    def timesteps(self, num_steps: int, spacing: Spacing | None = None) -> Tensor:
        """The configured spacing's timesteps (num_steps,) int64."""
        c = self.config
        spacing = spacing or c.timestep_spacing
        return timesteps(num_steps, spacing, c.num_train_timesteps, c.steps_offset)

    def prev_timestep(self, t: int, num_steps: int) -> int:
        """diffusers' DDIM rule t − T // n (negative on the last step)."""
        return int(t) - self.config.num_train_timesteps // num_steps

    def ddim_step(
        self,
        model_output: Tensor,  # v or ε prediction, shape of sample
        t: int,
        t_prev: int,
        sample: Tensor,  # x_t, e.g. (B, 4, F, h, w)
        eta: float = 0.0,
        noise: Tensor | None = None,  # standard normal, shape of sample; used when eta > 0
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One DDIM update x_t → x_{t_prev} (DDIM eqs. 12, 16); returns (x_prev, x̂0)."""
        a_t = self.alphas_cumprod[int(t)]
        a_prev = self.alphas_cumprod[t_prev] if t_prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        if self.config.prediction_type == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x0
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        else:
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        std = eta * ((1 - a_prev) / b_t * (1 - a_t / a_prev)) ** 0.5
        prev = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn(
                    sample.shape, generator=generator, dtype=sample.dtype, device=sample.device
                )
            prev = prev + std * noise
        return prev, x0

    def _at(self, values: Tensor, t: Timestep, like: Tensor) -> Tensor:
        """values[t] cast to like's dtype, shaped to broadcast over like (B, ...)."""
        v = values.to(like.device, like.dtype)[torch.as_tensor(t, device=like.device)]
        return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))

    def add_noise(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """Forward process x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε (t: int or per-sample (B,))."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a**0.5 * x0 + (1 - a) ** 0.5 * noise

    def velocity(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """The v-prediction target v_t = √ᾱ_t·ε − √(1−ᾱ_t)·x0."""
        a = self._at(self.alphas_cumprod, t, x0)
        return a**0.5 * noise - (1 - a) ** 0.5 * x0

    def snr(self, t: Tensor) -> Tensor:
        """SNR_t = ᾱ/(1−ᾱ) as float32, computed like the train scripts' ``compute_snr``."""
        acp = self.alphas_cumprod.to(t.device)
        return (acp[t] ** 0.5 / (1.0 - acp[t]) ** 0.5).float() ** 2

    def min_snr_weight(
        self, t: Tensor, gamma: float = 5.0, variant: Literal["official", "diffusers"] = "official"
    ) -> Tensor:
        """Min-SNR-γ per-sample loss weights (Hang et al. 2023) for timesteps t (B,).

        v-prediction, ``official`` (MMGT train_stage_{1,2}.py, from older diffusers examples):
        s = SNR + 1, w = min(s, γ)/s. ``diffusers`` (current examples): w = min(SNR, γ)/(SNR + 1).
        Both are finite at zero SNR (t = T−1): official → 1, diffusers → 0.
        ε-prediction: w = min(SNR, γ)/SNR, set to its limit 1 where SNR = 0.
        """
        snr = self.snr(t)
        if self.config.prediction_type == "v_prediction":
            if variant == "official":
                return torch.clamp(snr + 1, max=gamma) / (snr + 1)
            return torch.clamp(snr, max=gamma) / (snr + 1)
        return torch.where(snr > 0, torch.clamp(snr, max=gamma) / snr, torch.ones_like(snr))


class DDIMSampler:
    """Stateful DDIM loop: ``set_timesteps(n)`` then ``step(v, t, x_t)`` per listed timestep.

    ``pred_original_sample`` holds the last step's x̂0 (the windowed renderer reads it).
    """

    init_noise_sigma = 1.0  # x_T ~ N(0, I)

    def __init__(self, config: VideoScheduleConfig | VideoSchedule | None = None) -> None:
        self.schedule = config if isinstance(config, VideoSchedule) else VideoSchedule(config)
        self.config = self.schedule.config
        self.num_inference_steps: int | None = None
        self.timesteps = torch.zeros(0, dtype=torch.int64)
        self.pred_original_sample: Tensor | None = None

    def set_timesteps(self, num_steps: int | None = None) -> Tensor:
        """Set and return the descending timesteps (default: the config's step count)."""
        n = num_steps or self.config.num_inference_steps
        self.timesteps = self.schedule.timesteps(n)
        self.num_inference_steps = n
        return self.timesteps

    def step(
        self,
        model_output: Tensor,
        t: int | Tensor,
        sample: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """x_t → x_{t − T//n}; stores x̂0 in ``pred_original_sample``."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        t = int(t)
        t_prev = self.schedule.prev_timestep(t, self.num_inference_steps)
        prev, x0 = self.schedule.ddim_step(model_output, t, t_prev, sample, eta, noise, generator)
        self.pred_original_sample = x0
        return prev

    def add_noise(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """Forward process at t (see :meth:`VideoSchedule.add_noise`)."""
        return self.schedule.add_noise(x0, noise, t)
