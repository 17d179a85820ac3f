"""Sanity checks of the stage-2 compute accounting (``bench/stage2_compute.py``) on ``tiny``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "stage2_compute.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stage2_compute_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


sc = _load()


@pytest.fixture(scope="module")
def costs() -> dict:
    return sc.count_costs("tiny", size=128, window=12, overlap=4)


def test_every_call_is_counted(costs: dict) -> None:
    assert set(costs) == set(sc.CALLS)
    for name, cost in costs.items():
        assert cost.flops > 0, name
        assert cost.params > 0, name
        assert cost.weight_bytes == 2 * cost.params
        assert cost.act_bytes > 0, name


def test_cfg_doubles_the_unet(costs: dict) -> None:
    ratio = costs["unet_cfg"].flops / costs["unet"].flops
    # the unconditional half skips the reference bank, so slightly less than 2
    assert 1.7 < ratio <= 2.0
    assert costs["unet_cfg"].params == costs["unet"].params


def test_live_wav2vec_window_is_longer_than_one_second(costs: dict) -> None:
    assert costs["wav2vec2_live_window"].flops > 2 * costs["wav2vec2_1s"].flops


@pytest.mark.parametrize("mode", ["live", "offline"])
@pytest.mark.parametrize("cfg", [False, True])
def test_unet_term_is_linear_in_steps(costs: dict, mode: str, cfg: bool) -> None:
    two, four, thirty = (sc.per_frame(costs, s, cfg, mode) for s in (2, 4, 30))
    fixed = two["flops"] - two["unet_flops"]  # the step-independent per-frame networks
    assert fixed > 0
    assert four["flops"] - fixed == pytest.approx(2 * (two["flops"] - fixed))
    assert thirty["unet_flops"] == pytest.approx(15 * two["unet_flops"])
    unet = costs["unet_cfg" if cfg else "unet"].flops
    assert two["unet_flops"] == pytest.approx(2 * unet / 8)  # 8 new frames per window
    for gpu in sc.GPUS:
        assert four[gpu.name]["fps"] < two[gpu.name]["fps"]
        assert four[gpu.name]["fps_with_activations"] <= four[gpu.name]["fps"]


def test_live_reruns_the_pose_guider_per_window(costs: dict) -> None:
    live = sc.frame_calls(2, False, "live")
    offline = sc.frame_calls(2, False, "offline")
    assert live["pose_guider"] == pytest.approx(1 / 8)
    assert offline["pose_guider"] == pytest.approx(1 / 12)
    assert live["vae_decoder"] == offline["vae_decoder"] == 1.0
    with pytest.raises(ValueError):
        sc.frame_calls(2, False, "live", window=4, overlap=4)


def test_roofline_takes_the_slower_bound() -> None:
    gpu = sc.GPU("toy", tflops=1.0, tb_per_s=1.0, note="")
    compute_bound = sc.Cost(flops=1e12, params=1, act_bytes=0.0)
    memory_bound = sc.Cost(flops=1.0, params=int(1e12), act_bytes=0.0)
    assert sc.call_ms(compute_bound, gpu, 0.5) == pytest.approx(2000.0)
    assert sc.call_ms(memory_bound, gpu, 0.5) == pytest.approx(2000.0)


def test_report_marks_projections(costs: dict) -> None:
    import argparse

    args = argparse.Namespace(size=128, window=12, overlap=4, utilisation=0.4, audio_context=2.0)
    frames = [sc.per_frame(costs, 2, False, m) for m in ("live", "offline")]
    text = sc.report(costs, frames, args, None, None)
    assert "PROJECTIONS, NOT MEASUREMENTS" in text
    assert "| live | 2 | no |" in text
