"""Benchmark of the runtime backends: ONNX Runtime against torch on this CPU, in one run.

Run: ``python -m bench.bench_runtime``. Writes ``bench/results/runtime.json``. For the shipped
CPU SMGA model (exported to a temporary folder with ``export.onnx --optimize``, the recommended
export; ``--no-optimize`` skips the optimizer) it times, with one
intra-op thread for both backends (the live engine's budget):

* the denoiser step alone at the live window shape (28 frames: 24 committed + a 4-frame hop),
  batch 1 (no guidance) and batch 2 (the guided pair);
* the whole live SMGA call (:class:`~mmgt.drivers.smga.SMGADriver`, the live settings: one
  DDIM step, the package's guidance), as milliseconds of one core per second of motion.

For the stage-2 networks of the random ``tiny`` models (``render --stage2-preset tiny``, 128²
frames) it times each network at the live renderer's shapes, and one whole live window of the
diffusion renderer (8 new frames after 4 committed, 2 DDIM steps, no CFG: pose images, masks,
wav2vec2, pose guider, audio projection, two UNet calls, VAE decoding), torch against ORT.

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
from mmgt.audio import extract_light_features
from mmgt.backend import Backend
from mmgt.drivers import make_driver
from mmgt.drivers.hop import live_context
from mmgt.runtime import OnnxFolder, OrtRunner, TorchRunner, state_hash
from mmgt.types import AudioFeatures, KeypointSeq

FPS, HOP = 25, 4


def _time_pair(torch_fn, ort_fn, repeats: int) -> dict[str, float]:  # noqa: ANN001
    t = median_time(torch_fn, repeats=repeats, warmup=2)["median_s"]
    o = median_time(ort_fn, repeats=repeats, warmup=2)["median_s"]
    t2 = median_time(torch_fn, repeats=repeats, warmup=0)["median_s"]  # interleave: A B A
    t = (t + t2) / 2
    return {"torch_ms": round(1000 * t, 3), "ort_ms": round(1000 * o, 3),
            "ratio_torch_over_ort": round(t / o, 2)}  # fmt: skip


def stage2_results(repeats: int, optimize: bool) -> dict[str, object]:
    """The tiny stage-2 networks and one live window, torch against ORT."""
    from export.specs_stage2 import stage2_specs
    from mmgt.audio import load_audio
    from mmgt.avatar import BUNDLED_AVATAR, load_avatar
    from mmgt.renderers import make_renderer
    from mmgt.weights.stage2_models import Stage2Models

    results: dict[str, object] = {}
    # Live shapes: 12-frame windows (4 committed + 8 new), 8 frames decoded and projected.
    sizes = {"pose_guider": {"frames": 12}, "audio_proj": {"frames": 8},
             "vae_encoder": {"batch": 1}, "vae_decoder": {"batch": 8}, "reference_net": {},
             "unet_step": {"batch": 1, "frames": 12}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        specs = stage2_specs(Stage2Models.random("tiny"))
        write_folder(specs, Path(tmp), optimize=optimize, log=lambda _: None)
        for spec in specs:
            ort_run = OrtRunner(Path(tmp) / f"{spec.name}.onnx", threads=1)
            torch_run = TorchRunner(spec.module, spec.inputs, spec.outputs)
            runs = [sizes[spec.name]] + ([{"batch": 2, "frames": 12}] if spec.name == "unet_step"
                                         else [])  # fmt: skip
            for size in runs:
                x = spec.make_inputs(size)
                key = "_".join([spec.name, *(f"{k[0]}{v}" for k, v in size.items())])
                results[key] = _time_pair(lambda x=x, r=torch_run: r(**x),
                                          lambda x=x, r=ort_run: r(**x), repeats)  # fmt: skip
                print(key, results[key])
        speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))
        avatar = load_avatar(None, frame_size=128)
        driver = make_driver("procedural")
        poses = driver.generate(extract_light_features(speech), avatar.reference_pose,
                                frame_size=128)  # fmt: skip
        streams = []
        for backend in (None, Backend("onnxruntime", Path(tmp))):
            renderer = make_renderer("diffusion", preset="tiny", live=True, backend=backend)
            streams.append(_LiveWindows(renderer, avatar, poses, speech))
        window = _time_pair(streams[0].next_window, streams[1].next_window, repeats)
        window["torch_ms_per_second_of_video"] = round(window["torch_ms"] / (8 / FPS), 1)
        window["ort_ms_per_second_of_video"] = round(window["ort_ms"] / (8 / FPS), 1)
        results["live_window_c4_n8_steps2"] = window
        print("live window", window)
    return results


class _LiveWindows:
    """Pushes 8 more frames of a clip into a live diffusion stream: exactly one window each."""

    def __init__(self, renderer, avatar, poses, speech) -> None:  # noqa: ANN001
        self.stream = renderer.open_stream(renderer.prepare(avatar))
        self.poses, self.pcm = poses, np.pad(speech, (0, len(poses) * 640 - speech.size))
        self.frame = 0

    def next_window(self) -> None:
        k = self.frame % (len(self.poses) - 8)
        rows = AudioFeatures(self.pcm[k * 640 : (k + 8) * 640].reshape(8, 640), FPS, k, "pcm16k")
        out = self.stream.push(self.poses.frames(k, k + 8), audio=rows)
        assert len(out) == 8
        self.frame += 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--stage2-repeats", type=int, default=15)
    ap.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="export without --optimize (faster export, slower ORT graphs)",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    results: dict[str, object] = {"threads": 1, "export_optimize": args.optimize}
    results["stage2_tiny"] = stage2_results(args.stage2_repeats, args.optimize)
    with tempfile.TemporaryDirectory() as tmp:
        drv_torch = make_driver("smga", steps=1)
        model = drv_torch.model
        spec = smga_step(model)
        write_folder([spec], Path(tmp), optimize=args.optimize, log=lambda _: None)
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
    results["targets"] = {"ort_over_torch_min": 1.3, "live_smga_ms_per_second_max": 50,
                          "stage2_window_ort_over_torch_min": 1.3}  # fmt: skip
    print(write_result("runtime", results))


if __name__ == "__main__":
    main()
