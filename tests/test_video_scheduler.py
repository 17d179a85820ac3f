"""Stage-2 DDIM maths vs diffusers' DDIMScheduler (reference only) and the official fixture B.3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.training_utils import compute_snr

from mmgt.schedulers.video import (
    DDIMSampler,
    VideoSchedule,
    VideoScheduleConfig,
    guided,
    timesteps,
)

FIXTURES = Path(__file__).parent / "fixtures/official"
OFFICIAL = dict(  # the official inference kwargs (stage-2 audio2vid)
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    clip_sample=False,
    steps_offset=1,
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
)
CONFIGS = {
    "inference": (VideoScheduleConfig(), OFFICIAL),
    "training": (VideoScheduleConfig.training(), {**OFFICIAL, "beta_schedule": "scaled_linear"}),
}
SHAPE = (2, 4, 3, 8, 8)  # (B, C, F, h, w)


def reference(kwargs: dict, steps: int | None = None) -> DDIMScheduler:
    ref = DDIMScheduler(**kwargs)
    if steps is not None:
        ref.set_timesteps(steps)
    return ref


@pytest.mark.parametrize("name", CONFIGS)
def test_alphas_cumprod_match_diffusers(name: str) -> None:
    config, kwargs = CONFIGS[name]
    ours, ref = VideoSchedule(config), reference(kwargs)
    torch.testing.assert_close(ours.betas, ref.betas, rtol=0, atol=0)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod, rtol=0, atol=0)
    assert ours.alphas_cumprod[-1] == 0  # zero terminal SNR


@pytest.mark.parametrize("spacing", ["trailing", "leading", "linspace"])
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 8, 25, 30, 50, 1000])
def test_timesteps_match_diffusers(spacing: str, steps: int) -> None:
    ref = reference({**OFFICIAL, "timestep_spacing": spacing}, steps)
    ours = VideoSchedule(VideoScheduleConfig(timestep_spacing=spacing)).timesteps(steps)
    assert ours.dtype == torch.int64
    assert ours.tolist() == ref.timesteps.tolist()


def test_official_trailing_timesteps() -> None:
    t30 = timesteps(30).tolist()
    assert t30[:3] == [999, 966, 932] and t30[-2:] == [66, 32] and 499 in t30
    assert timesteps(4).tolist() == [999, 749, 499, 249]
    assert timesteps(2).tolist() == [999, 499]
    assert len(timesteps(61)) == 61  # diffusers appends a spurious −1 here


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("steps", [30, 4, 2])
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_step_matches_diffusers(name: str, steps: int, eta: float) -> None:
    config, kwargs = CONFIGS[name]
    ref, ours = reference(kwargs, steps), DDIMSampler(config)
    assert ours.set_timesteps(steps).tolist() == ref.timesteps.tolist()
    g = torch.Generator().manual_seed(steps)
    worst = 0.0
    for t in ref.timesteps.tolist():
        sample, v, noise = (torch.randn(SHAPE, generator=g) for _ in range(3))
        want = ref.step(v, t, sample, eta=eta, variance_noise=noise if eta else None)
        got = ours.step(v, t, sample, eta=eta, noise=noise)
        x0 = ours.pred_original_sample
        for a, b in ((got, want.prev_sample), (x0, want.pred_original_sample)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
            worst = max(worst, (a - b).abs().max().item())
    print(f"{name} steps={steps} eta={eta}: max |Δ| vs diffusers {worst:.2e}")


def test_epsilon_step_matches_diffusers() -> None:
    kwargs = {**OFFICIAL, "prediction_type": "epsilon", "rescale_betas_zero_snr": False}
    ref = reference(kwargs, 4)
    ours = DDIMSampler(VideoScheduleConfig(prediction_type="epsilon", rescale_betas_zero_snr=False))
    ours.set_timesteps(4)
    g = torch.Generator().manual_seed(0)
    for t in ref.timesteps.tolist():
        sample, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
        want = ref.step(eps, t, sample).prev_sample
        torch.testing.assert_close(ours.step(eps, t, sample), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CONFIGS)
def test_training_helpers_match_diffusers(name: str) -> None:
    config, kwargs = CONFIGS[name]
    ours, ref = VideoSchedule(config), reference(kwargs)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.tensor([0, 999])
    for a, b in (
        (ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t)),
        (ours.velocity(x0, noise, t), ref.get_velocity(x0, noise, t)),
        (ours.add_noise(x0, noise, 499), ref.add_noise(x0, noise, torch.tensor([499]))),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    every = torch.arange(1000)
    torch.testing.assert_close(ours.snr(every), compute_snr(ref, every), rtol=1e-6, atol=0)


def test_min_snr_weight() -> None:
    s = VideoSchedule(VideoScheduleConfig.training())
    t = torch.arange(1000)
    snr = compute_snr(reference({**OFFICIAL, "beta_schedule": "scaled_linear"}), t)
    official = torch.stack([snr + 1, 5.0 * torch.ones_like(snr)], 1).min(1)[0] / (snr + 1)
    torch.testing.assert_close(s.min_snr_weight(t), official)  # train_stage_2.py formula
    current = torch.stack([snr, 5.0 * torch.ones_like(snr)], 1).min(1)[0] / (snr + 1)
    torch.testing.assert_close(s.min_snr_weight(t, variant="diffusers"), current)
    assert s.min_snr_weight(t[-1:]).item() == 1.0  # zero SNR at t = 999 is finite
    eps = VideoSchedule(VideoScheduleConfig(prediction_type="epsilon"))
    assert torch.isfinite(eps.min_snr_weight(t)).all() and eps.min_snr_weight(t[-1:]) == 1.0


def test_guided() -> None:
    u, c = torch.randn(SHAPE), torch.randn(SHAPE)
    torch.testing.assert_close(guided(u, c, 3.5), u + 3.5 * (c - u))
    assert guided(u, c, 1.0) is c and guided(u, c, 0.0) is c


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / "stage2_tiny_io.npz") as data:  # float16 arrays → float32 (lossless)
        names = ("latents", "timestep", "out_cfg_pair", "v_guided_cfg3p5", "latents_prev")
        return {k: torch.from_numpy(data[k].astype(np.float32)) for k in names}


def test_official_fixture_cfg_and_step(io: dict[str, torch.Tensor]) -> None:
    pair = io["out_cfg_pair"]  # (2, 4, 12, 16, 16): row 0 uncond, row 1 cond
    v = guided(pair[:1], pair[1:], 3.5)
    torch.testing.assert_close(v, io["v_guided_cfg3p5"], rtol=0, atol=3e-4)
    sampler = DDIMSampler()
    assert int(io["timestep"]) == 499 and 499 in sampler.set_timesteps(30).tolist()
    prev = sampler.step(io["v_guided_cfg3p5"], 499, io["latents"], eta=0.0)
    torch.testing.assert_close(prev, io["latents_prev"], rtol=0, atol=1e-4)
    print(
        f"fixture: guided max |Δ| {(v - io['v_guided_cfg3p5']).abs().max():.2e}, "
        f"latents_prev max |Δ| {(prev - io['latents_prev']).abs().max():.2e}"
    )


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 30])
def test_oracle_v_recovers_x0(steps: int) -> None:
    """A model returning the true v of a known x0 at every x_t lands on x0 (up to float32)."""
    s = VideoSchedule()
    g = torch.Generator().manual_seed(steps)
    x0 = torch.randn(SHAPE, generator=g)
    sampler = DDIMSampler(s)
    x = torch.randn(SHAPE, generator=g) * sampler.init_noise_sigma
    for t in sampler.set_timesteps(steps).tolist():
        a = s.alphas_cumprod[t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()  # the ε that puts x on x0's trajectory
        x = sampler.step(s.velocity(x0, eps, t), t, x)
        torch.testing.assert_close(sampler.pred_original_sample, x0, rtol=0, atol=2e-6)
    torch.testing.assert_close(x, x0, rtol=0, atol=2e-6)
