"""Benchmark of SMGA sampling cost per generated second of motion, on one CPU core.

Run: ``python -m bench.bench_smga``. Writes ``bench/results/smga.json``. For each preset and
DDIM step count it times one window call of :class:`mmgt.drivers.smga.SMGADriver` (with
classifier-free guidance, i.e. a batch of 2) and reports milliseconds of one core per second of
generated motion:

* **offline**: full windows (W frames, C = 8 context frames → W − C new frames per call);
* **live**: the engine's hop (H new frames per call, continuing from the engine's committed
  context, :func:`mmgt.drivers.hop.live_context`: W − 2H frames), with and without guidance
  (guidance 1 runs one forward pass per step instead of two; the live default).

Speed does not depend on the weights, so random weights are used; ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench._common import median_time, write_result
from mmgt.drivers.hop import live_context
from mmgt.drivers.smga import SamplerSettings, SMGADriver
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, preset
from mmgt.types import AudioFeatures, KeypointSeq

FPS = 25


def _cost(
    model: SMGA, steps: int, new: int, context: int, repeats: int, guidance: float = 2.0
) -> dict[str, float]:
    w = model.config.frames
    settings = SamplerSettings(steps=steps, eta=0.0, guidance=guidance, context=context)
    drv = SMGADriver(model, feature_kind="bench", settings=settings)
    rng = np.random.default_rng(0)
    feats = AudioFeatures(rng.normal(size=(context + new, model.config.audio_dim)), kind="bench")
    ref = np.zeros((134, 3), np.float32)
    ref[:, :2] = rng.uniform(100, 400, (134, 2))
    ref[:, 2] = 1.0
    committed = None
    if context:
        committed = KeypointSeq(np.repeat(ref[None], context, 0))
    assert context + new <= w
    t = median_time(lambda: drv.generate(feats, ref, committed), repeats=repeats, warmup=1)
    per_second = t["median_s"] / (new / FPS)
    return {
        "ms_per_call": round(1000 * t["median_s"], 2),
        "ms_per_second_of_motion": round(1000 * per_second, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--official", action="store_true", help="also time the official preset")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    results: dict[str, object] = {}
    presets = ["tiny", "small"] + (["official"] if args.official else [])
    for name in presets:
        model = SMGA(preset(name, audio_dim=43 if name != "official" else 1059)).eval()
        w = model.config.frames
        steps_list = (1, 2, 4, 8) if name != "official" else (4, 50)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        entry: dict[str, object] = {"window_frames": w, "params_millions": round(params, 2)}
        for steps in steps_list:
            reps = 1 if name == "official" and steps == 50 else args.repeats
            entry[f"offline_steps{steps}"] = _cost(model, steps, w - 8, 8, reps)
            for hop in (4, 8):
                if 2 * hop < w:
                    key = f"live_hop{hop}_steps{steps}"
                    ctx = live_context(w, hop, 0)
                    entry[key] = _cost(model, steps, hop, ctx, reps)
                    entry[key + "_noguidance"] = _cost(model, steps, hop, ctx, reps, 1.0)
        results[name] = entry
        print(name, entry)
    results["threads"] = 1
    results["keypoint_dim"] = layout.OFFICIAL_DIM
    results["targets"] = {"live_default_ms_per_second_of_motion_max": 50}
    print(write_result("smga", results))


if __name__ == "__main__":
    main()
