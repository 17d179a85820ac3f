"""ONNX export of the stage-2 networks and the diffusion renderer on ONNX Runtime.

One folder is exported once per test session with ``python -m export.onnx --stage2-preset tiny``
(the random tiny models the renderer uses); every network is checked by the exporter at two sizes
and here again at a third, and whole renders through ONNX Runtime are compared with torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.fusions import MIN_FUSED_KEYS, OrtRewrites
from export.onnx import ATOL, RTOL, write_folder
from export.onnx import main as export_main
from export.specs import Axis, NetworkSpec
from export.specs_stage2 import stage2_specs
from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.backend import Backend
from mmgt.cli import main as cli_main
from mmgt.drivers import make_driver
from mmgt.errors import InputError
from mmgt.models.reference import ReferenceRead
from mmgt.models.stage2_steps import STAGE2_NETWORKS, UNetStep, steps_of
from mmgt.renderers import make_renderer
from mmgt.runtime import MANIFEST, OrtRunner, TorchRunner, state_hash
from mmgt.weights.stage2_models import Stage2Models

SIZE = 128


@pytest.fixture(scope="module")
def models() -> Stage2Models:
    return Stage2Models.random("tiny")  # the models of render --stage2-preset tiny


@pytest.fixture(scope="module")
def onnx_dir(stage2_onnx) -> Path:
    """The shipped SMGA's export with the stage-2 networks added by ``--networks``, which keeps
    the manifest entries already in the folder (built in the background: tests/conftest.py)."""
    return stage2_onnx


@pytest.fixture(scope="module")
def clip() -> tuple:
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 16000 * 6 // 5]
    avatar = load_avatar(None, frame_size=SIZE)
    driver = make_driver("procedural")
    poses = driver.generate(extract_light_features(speech), avatar.reference_pose, frame_size=SIZE)
    return avatar, poses, speech


def test_manifest_lists_every_network_with_hash_axes_and_fused_attention(onnx_dir, models):
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    networks = manifest["networks"]
    assert set(networks) == {"smga_step", *STAGE2_NETWORKS}
    steps = steps_of(models)
    for name in STAGE2_NETWORKS:
        entry = networks[name]
        assert entry["weights_sha256"] == state_hash(steps[name])
        assert entry["target"] == "onnxruntime"
        assert {c["sizes"] for c in entry["checks"]} == {"opt", "second"}
    unet = networks["unet_step"]
    assert unet["inputs"]["latents"]["shape"] == ["batch", 4, "frames", 16, 16]
    assert unet["inputs"]["mask_lip_2"]["shape"] == ["batch", "frames", 16]
    assert unet["inputs"]["bank_0"]["dtype"] == "float16"
    assert unet["domains"] == ["com.microsoft"]
    graph = onnx.load(str(onnx_dir / unet["file"]), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    # Spatial attention (with the reference bank) is fused; the motion modules' attention over
    # the frames of a window (a dynamic length) stays in plain ONNX ops.
    assert ops.count("MultiHeadAttention") > 0 and ops.count("Softmax") > 0
    assert networks["pose_guider"]["domains"] == []


@pytest.mark.parametrize("name", STAGE2_NETWORKS)
def test_every_network_on_ort_equals_torch_at_a_third_size(onnx_dir, models, name):
    spec = next(s for s in stage2_specs(models) if s.name == name)
    third = {n: (a.min + a.opt) // 2 + 1 for n, a in spec.axes.items()}
    inputs = spec.make_inputs(third, seed=7)
    got = OrtRunner(onnx_dir / f"{name}.onnx")(**inputs)
    want = TorchRunner(spec.module, spec.inputs, spec.outputs)(**inputs)
    for out in spec.outputs:
        rtol = 2.0**-10 if want[out].dtype == torch.float16 else RTOL
        torch.testing.assert_close(got[out], want[out], rtol=rtol, atol=ATOL)


def test_the_bank_switch_equals_the_official_unconditional_rows(models):
    """``bank_keep`` (one graph for both CFG halves) equals running the unconditional half
    without the reference bank, as the official pipeline does."""
    spec = next(s for s in stage2_specs(models) if s.name == "unet_step")
    step: UNetStep = spec.module
    x = spec.make_inputs({"batch": 2, "frames": 6}, seed=3)  # bank_keep = [False, True]
    with torch.no_grad():
        got = step(**x)
        bank = {n: x[f"bank_{i}"] for i, n in enumerate(step.bank_names)}
        want = _unet_with_reference(step, x, ReferenceRead(bank, 6, uncond_rows=6))
        x["bank_keep"] = torch.tensor([True, True])
        with_bank = step(**x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[:1], with_bank[:1], atol=1e-3)  # the bank matters
    torch.testing.assert_close(got[1:], with_bank[1:], rtol=1e-5, atol=1e-5)


def _unet_with_reference(step: UNetStep, x: dict, reference: ReferenceRead) -> torch.Tensor:
    from mmgt.models.mmhaa import BRANCHES, BranchMasks

    b, f = x["latents"].shape[0], x["latents"].shape[2]
    levels = {
        br: tuple(x[f"mask_{br}_{k}"].reshape(b * f, -1) for k in range(3)) for br in BRANCHES
    }
    return step.unet(
        x["latents"], x["timestep"], x["context"], x["audio_tokens"],
        BranchMasks(levels["full"], levels["face"], levels["lip"]),
        x["pose_features"].reshape(b * f, *x["pose_features"].shape[2:]), reference,
        x["region_weights"],
    )  # fmt: skip


def test_offline_render_on_ort_equals_torch(onnx_dir, clip):
    """The official windowed sampler through ORT (with CFG): frames within one grey level.

    Each network agrees with torch to ~1e-5 (the bank to one float16 step); the random tiny
    models amplify that a little over three steps, far below a visible difference."""
    avatar, poses, speech = clip
    on_torch = make_renderer("diffusion", preset="tiny", steps=3, seed=1)
    backend = Backend("onnxruntime", onnx_dir)
    on_ort = make_renderer("diffusion", preset="tiny", steps=3, seed=1, backend=backend)
    assert {r.provider for r in on_ort.run.values()} == {"CPUExecutionProvider"}
    a = np.stack(on_torch.render_clip(on_torch.prepare(avatar), poses, speech)).astype(int)
    b = np.stack(on_ort.render_clip(on_ort.prepare(avatar), poses, speech)).astype(int)
    assert a.shape == b.shape == (len(poses), SIZE, SIZE, 3)
    assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.01
    assert a.std() > 10  # a real image, not a constant


def test_live_windows_on_ort_equal_torch(onnx_dir, clip):
    from mmgt.types import AudioFeatures

    avatar, poses, speech = clip
    frames = []
    for backend in (None, Backend("onnxruntime", onnx_dir)):
        r = make_renderer("diffusion", preset="tiny", live=True, seed=2, backend=backend)
        stream = r.open_stream(r.prepare(avatar))
        pcm = np.pad(speech, (0, len(poses) * 640 - speech.size))[: len(poses) * 640]
        out = []
        for k in range(0, 16, 4):  # four pushes of 4 frames → two 8-frame windows
            rows = AudioFeatures(pcm[k * 640 : (k + 4) * 640].reshape(4, 640), 25.0, k, "pcm16k")
            out += stream.push(poses.frames(k, k + 4), audio=rows)
        frames.append(np.stack(out).astype(int))
    assert frames[0].shape == frames[1].shape == (16, SIZE, SIZE, 3)
    assert np.abs(frames[0] - frames[1]).max() <= 2


def _video(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.mark.slow
def test_render_cli_on_onnxruntime_equals_torch(onnx_dir, tmp_path, capsys):
    """``render --backend onnxruntime`` gives the torch video. Frames agree within two grey
    levels before encoding (see above); x264 turns such differences into a few different
    quantisation choices on this noise-like video, so the mp4s agree to about one level."""
    import soundfile as sf

    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[:9600]
    audio = tmp_path / "short.wav"
    sf.write(audio, speech, 16000)
    base = ["render", "--audio", str(audio), "--size", str(SIZE), "-q", "--driver",
            "procedural", "--renderer", "diffusion", "--stage2-preset", "tiny",
            "--render-steps", "1", "--render-guidance", "1"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same summation order whatever ran before in this process
    try:
        assert cli_main([*base, "--out", str(tmp_path / "torch.mp4")]) == 0
        ort = ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)]
        assert cli_main([*base, "--out", str(tmp_path / "ort.mp4"), *ort]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = _video(tmp_path / "torch.mp4"), _video(tmp_path / "ort.mp4")
    assert a.shape == b.shape == (15, SIZE, SIZE, 3)
    assert np.abs(a.astype(int) - b).mean() < 1.5
    # Backend flags are checked before anything is rendered.
    out = tmp_path / "x.mp4"
    warp = ["render", "--audio", str(audio), "--size", str(SIZE), "-q", "--driver", "procedural"]
    assert cli_main([*warp, "--out", str(out), *ort]) == 2
    assert "have none" in capsys.readouterr().err
    assert cli_main([*base, "--out", str(out), "--backend", "tensorrt"]) == 2
    assert "--engine-dir" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_without_the_stage2_networks_is_refused(onnx_dir, tmp_path):
    # What `python -m export.onnx` without a stage-2 source writes: SMGA only.
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    manifest["networks"] = {"smga_step": manifest["networks"]["smga_step"]}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    (tmp_path / "smga_step.onnx").write_bytes((onnx_dir / "smga_step.onnx").read_bytes())
    with pytest.raises(InputError, match="no 'pose_guider' network"):
        make_renderer("diffusion", preset="tiny", backend=Backend("onnxruntime", tmp_path))


class _TwoAttentions(nn.Module):
    input_names, output_names = ("x", "y"), ("long", "short")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sdpa = nn.functional.scaled_dot_product_attention
        q = x.reshape(x.shape[0], x.shape[1], 2, 4).transpose(1, 2)  # (B, 2, 96, 4)
        k = y.reshape(y.shape[0], y.shape[1], 2, 4).transpose(1, 2)  # (B, 2, T, 4), T dynamic
        return sdpa(q, q, q), sdpa(q, k, k)


def test_fused_attention_only_for_long_static_keys(tmp_path):
    """96 static keys → com.microsoft.MultiHeadAttention; a dynamic key length → plain ops;
    both equal torch in ONNX Runtime, and the tensorrt target has no custom ops at all."""
    batch, frames = Axis("batch", 1, 2, 3, 1), Axis("frames", 2, 8, 16, 5)

    def make(size: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(size["batch"], 96, 8, generator=g),
                "y": torch.randn(size["batch"], size["frames"], 8, generator=g)}  # fmt: skip

    module = _TwoAttentions()
    spec = NetworkSpec("two", module, ("x", "y"), ("long", "short"),
                       {"x": {0: batch}, "y": {0: batch, 1: frames}}, make)  # fmt: skip
    assert MIN_FUSED_KEYS <= 96
    for target, fused in (("onnxruntime", 1), ("tensorrt", 0)):
        folder = tmp_path / target
        entry = write_folder([spec], folder, target=target, log=lambda _: None)["networks"]["two"]
        ops = [n.op_type for n in onnx.load(str(folder / "two.onnx")).graph.node]
        assert ops.count("MultiHeadAttention") == fused
        assert entry["domains"] == (["com.microsoft"] if fused else [])
    with OrtRewrites():  # eager calls outside tracing are left alone
        x = make({"batch": 1, "frames": 4})
        torch.testing.assert_close(module(**x)[0], _TwoAttentions()(**x)[0])


class _GegluBlock(nn.Module):
    """diffusers' GEGLU feed-forward on a 3-D input, plus a plain linear layer."""

    def __init__(self) -> None:
        super().__init__()
        from diffusers.models.attention import FeedForward

        self.ff = FeedForward(8, activation_fn="geglu")
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ff(x))


def test_onnxruntime_target_writes_gemms_and_splits_geglu_weights(tmp_path):
    """Linear layers on 3-D inputs become Gemm with their bias; GEGLU's value and gate become
    two Gemms (no Split of one output); the tensorrt target keeps the exporter's plain form;
    both equal torch in ONNX Runtime (write_folder checks parity at two sizes)."""
    batch, frames = Axis("batch", 1, 2, 3, 1), Axis("frames", 2, 8, 16, 5)

    def make(size: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(size["batch"], size["frames"], 8, generator=g)}

    spec = NetworkSpec("ff", _GegluBlock(), ("x",), ("y",), {"x": {0: batch, 1: frames}}, make)
    counts = {}
    for target in ("onnxruntime", "tensorrt"):
        folder = tmp_path / target
        entry = write_folder([spec], folder, target=target, log=lambda _: None)["networks"]["ff"]
        assert all(c["max_abs_error"] < 1e-5 for c in entry["checks"]), entry["checks"]
        ops = [n.op_type for n in onnx.load(str(folder / "ff.onnx")).graph.node]
        counts[target] = {op: ops.count(op) for op in ("Gemm", "Split", "MatMul")}
    assert counts["onnxruntime"] == {"Gemm": 4, "Split": 0, "MatMul": 0}  # ff.proj ×2, ff out, out
    assert counts["tensorrt"]["Gemm"] == 0 and counts["tensorrt"]["MatMul"] == 3


def test_server_engine_renders_with_the_diffusion_renderer_on_onnxruntime(onnx_dir):
    from engine.engine import Engine, EngineConfig
    from server.__main__ import parse_args, settings_from

    ort = ["--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)]
    args = parse_args(["--renderer", "diffusion", "--stage2-preset", "tiny", "--driver",
                       "procedural", *ort])  # fmt: skip
    settings = settings_from(args)
    assert settings.renderer_options["backend"].name == "onnxruntime"
    config = EngineConfig(driver=settings.driver, renderer=settings.renderer,
                          renderer_options=settings.renderer_options)  # fmt: skip
    engine = Engine(config)
    try:
        runners = engine.renderer.run
        assert set(runners) == set(STAGE2_NETWORKS)
        assert {(r.backend, r.provider) for r in runners.values()} == {
            ("onnxruntime", "CPUExecutionProvider")
        }
    finally:
        engine.executor.shutdown()


def test_export_from_an_official_weights_folder_and_bad_flags(tmp_path, capsys):
    from tests.helpers import write_tiny_official_folder

    root = tmp_path / "weights"
    write_tiny_official_folder(root)
    out = tmp_path / "onnx"
    argv = ["--weights-dir", str(root), "--networks", "pose_guider,audio_proj", "--target",
            "tensorrt", "--onnx-dir", str(out)]  # fmt: skip
    assert export_main(argv) == 0
    manifest = json.loads((out / MANIFEST).read_text())["networks"]
    assert set(manifest) == {"pose_guider", "audio_proj"}
    steps = steps_of(Stage2Models.from_folder(root))
    for name, entry in manifest.items():
        assert entry["weights_sha256"] == state_hash(steps[name])
        assert entry["target"] == "tensorrt" and entry["domains"] == []
    assert export_main(["--networks", "unet", "--onnx-dir", str(out)]) == 2
    assert "unknown unet" in capsys.readouterr().err
    assert export_main(["--networks", "unet_step", "--onnx-dir", str(out)]) == 2
    assert "need --weights-dir or --stage2-preset" in capsys.readouterr().err
    assert export_main(["--weights-dir", str(tmp_path / "none"), "--onnx-dir", str(out)]) == 2
