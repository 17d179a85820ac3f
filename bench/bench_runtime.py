"""Benchmark of the runtime backends: ONNX Runtime against torch on this CPU, in one run.

Run: ``python -m bench.bench_runtime``. Writes ``bench/results/runtime.json``. For the shipped
CPU SMGA model (exported to a temporary folder with ``export.onnx``) it times, with one
intra-op thread for both backends (the live engine's budget):

* the denoiser step alone at the live window shape (28 frames: 24 committed + a 4-frame hop),
  batch 1 (no guidance) and batch 2 (the guided pair);
* the whole live SMGA call (:class:`~mmgt.drivers.smga.SMGADriver`, the live settings: one
  DDIM step, the package's guidance), as milliseconds of one core per second of motion.

Ratios are torch time / ORT time from the same run, interleaved to share machine noise.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench._common import median_time, write_result
from export.onnx import write_folder
from export.specs import smga_step
from mmgt.drivers import make_driver
from mmgt.drivers.hop import live_context
from mmgt.runtime import OnnxFolder, TorchRunner, state_hash
from mmgt.types import AudioFeatures, KeypointSeq

FPS, HOP = 25, 4


def _time_pair(torch_fn, ort_fn, repeats: int) -> dict[str, float]:  # noqa: ANN001
    t = median_time(torch_fn, repeats=repeats, warmup=2)["median_s"]
    o = median_time(ort_fn, repeats=repeats, warmup=2)["median_s"]
    t2 = median_time(torch_fn, repeats=repeats, warmup=0)["median_s"]  # interleave: A B A
    t = (t + t2) / 2
    return {"torch_ms": round(1000 * t, 3), "ort_ms": round(1000 * o, 3),
            "ratio_torch_over_ort": round(t / o, 2)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    results: dict[str, object] = {"threads": 1}
    with tempfile.TemporaryDirectory() as tmp:
        drv_torch = make_driver("smga", steps=1)
        model = drv_torch.model
        spec = smga_step(model)
        write_folder([spec], Path(tmp), log=lambda _: None)
        step = OnnxFolder(tmp).runner("smga_step", weights_hash=state_hash(model), threads=1)
        torch_step = TorchRunner(model, spec.inputs, spec.outputs)
        window = model.config.frames
        context = live_context(window, HOP, 0)
        for batch in (1, 2):
            x = spec.make_inputs({"batch": batch, "frames": context + HOP})
            key = f"smga_step_b{batch}_f{context + HOP}"
            results[key] = _time_pair(lambda x=x: torch_step(**x), lambda x=x: step(**x),
                                      args.repeats)  # fmt: skip
            print(key, results[key])
        drv_torch.settings = replace(drv_torch.settings, context=context)
        drv_ort = copy.copy(drv_torch)  # the same model and settings, the denoiser on ORT
        drv_ort.step = step
        rng = np.random.default_rng(0)
        feats = AudioFeatures(rng.normal(size=(context + HOP, model.config.audio_dim)),
                              kind=drv_torch.feature_kind)  # fmt: skip
        ref = np.zeros((134, 3), np.float32)
        ref[:, :2] = rng.uniform(100, 400, (134, 2))
        ref[:, 2] = 1.0
        committed = KeypointSeq(np.repeat(ref[None], context, 0))
        live = _time_pair(
            lambda: drv_torch.generate(feats, ref, committed),
            lambda: drv_ort.generate(feats, ref, committed),
            args.repeats // 2,
        )
        per_s = HOP / FPS
        live["torch_ms_per_second_of_motion"] = round(live["torch_ms"] / per_s, 1)
        live["ort_ms_per_second_of_motion"] = round(live["ort_ms"] / per_s, 1)
        live["guidance"] = drv_torch.settings.guidance
        results["smga_live_call_hop4_steps1"] = live
        print("live", live)
    results["targets"] = {"ort_over_torch_min": 1.3, "live_smga_ms_per_second_max": 50}
    print(write_result("runtime", results))


if __name__ == "__main__":
    main()
