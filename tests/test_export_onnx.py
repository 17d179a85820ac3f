"""ONNX export of the SMGA denoiser step and the ONNX Runtime backend behind the runner API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import onnx
import pytest
import torch

from export.onnx import ATOL, DEFAULT_OPSET, RTOL, _opsets, write_folder
from export.onnx import main as export_main
from export.specs import NetworkSpec, smga_step
from mmgt.audio import extract_light_features
from mmgt.cli import main as cli_main
from mmgt.drivers.smga import SamplerSettings, SMGADriver
from mmgt.errors import InputError
from mmgt.models.smga import SMGA, preset
from mmgt.ort_cache import CACHE_DIR, cache_key
from mmgt.runtime import MANIFEST, OnnxFolder, OrtRunner, TorchRunner, state_hash
from tests.helpers import synthetic_reference_pose, tiny_smga

SPEECH = Path(__file__).resolve().parents[1] / "mmgt" / "assets" / "speech_sample.wav"


@pytest.fixture(scope="module")
def tiny_export(tiny_smga_onnx) -> tuple[SMGA, Path]:
    """The tiny SMGA and its export (tests/conftest.py: built in the background)."""
    return tiny_smga(3), tiny_smga_onnx


def test_manifest_records_names_axes_hash_and_two_checked_sizes(tiny_export):
    model, folder = tiny_export
    manifest = json.loads((folder / MANIFEST).read_text())
    entry = manifest["networks"]["smga_step"]
    assert (folder / entry["file"]).is_file()
    assert list(entry["inputs"]) == ["x", "cond_frame", "audio", "times", "keep"]
    assert entry["inputs"]["x"]["shape"] == ["batch", "frames", 402]
    assert entry["outputs"] == ["x0"]
    assert entry["weights_sha256"] == state_hash(model)
    assert entry["opset"] == DEFAULT_OPSET == _opsets(folder / entry["file"])[""]  # as written
    assert {c["sizes"] for c in entry["checks"]} == {"opt", "second"}
    sizes = [c["shapes"] for c in entry["checks"]]
    assert sizes[0] != sizes[1]  # the dynamic axes really were exercised at two sizes
    assert all(c["elementwise"] for c in entry["checks"])  # tiny: rtol 1e-4, atol 1e-5 per element
    assert not list(folder.glob(".export-*"))  # no temporary files left behind


class _Amplifier(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000 * x  # outputs up to 1000, one of them 0


@pytest.mark.parametrize(("error", "passes"), [(1e-3, True), (1.0, False)])
def test_parity_is_judged_against_the_outputs_magnitude(monkeypatch, error, passes):
    """A difference of 1e-6 of the largest output passes although an output near zero then
    misses the element-wise tolerance (as the official-width UNet step's fp32 rounding does);
    a difference of 1e-3 of it fails, naming the sizes."""
    import export.onnx as export_onnx

    class OffBy:  # ONNX Runtime's place: the network's outputs, off by ``error``
        def __init__(self, path: Path, threads: int = 1) -> None:
            pass

        def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"y": 1000 * inputs["x"] + error}

    monkeypatch.setattr(export_onnx, "OrtRunner", OffBy)
    inputs = {"x": torch.linspace(-1, 1, 101)}
    spec = NetworkSpec("amp", _Amplifier(), ("x",), ("y",), {}, lambda size, seed=0: inputs)
    if not passes:
        with pytest.raises(RuntimeError, match=r"amp: .* on y at the opt sizes by up to 1"):
            export_onnx.check_parity(spec, Path("unused.onnx"))
        return
    checks = export_onnx.check_parity(spec, Path("unused.onnx"))
    assert [c["elementwise"] for c in checks] == [False, False]
    assert checks[0]["max_abs_error"] == pytest.approx(1e-3, rel=0.05)  # (fp32 at 1000)
    assert checks[0]["max_abs_output"] == 1000


def test_a_large_network_is_checked_at_small_sizes(tmp_path, monkeypatch):
    """Over LARGE_BYTES of weights (the official UNets), the first check runs at each axis's
    ``small`` size (a pair of 2 frames) instead of ``opt``: at 512² the opt-size check of the
    UNet step needs more memory than many machines have."""
    import export.onnx as export_onnx

    monkeypatch.setattr(export_onnx, "LARGE_BYTES", 0)  # the tiny SMGA counts as large
    entry = export_onnx.export_network(smga_step(tiny_smga(3)), tmp_path)
    assert [c["sizes"] for c in entry["checks"]] == ["small", "second"]
    assert entry["checks"][0]["shapes"] == {"batch": 2, "frames": 2}


@pytest.mark.parametrize(("batch", "frames"), [(1, 3), (2, 16), (4, 9)])
def test_ort_equals_torch_at_any_size(tiny_export, batch, frames):
    model, folder = tiny_export
    spec = smga_step(model)
    inputs = spec.make_inputs({"batch": batch, "frames": frames}, seed=batch * 100 + frames)
    ort_out = OrtRunner(folder / "smga_step.onnx")(**inputs)["x0"]
    torch_out = TorchRunner(model, spec.inputs, spec.outputs)(**inputs)["x0"]
    assert ort_out.shape == (batch, frames, 402)
    torch.testing.assert_close(ort_out, torch_out, rtol=RTOL, atol=ATOL)


def test_runner_reports_the_provider_in_use(tiny_export):
    _, folder = tiny_export
    runner = OnnxFolder(folder).runner("smga_step", weights_hash=None)
    assert runner.provider == "CPUExecutionProvider"
    assert runner.input_names == ("x", "cond_frame", "audio", "times", "keep")


def test_driver_on_ort_matches_torch(tiny_export):
    """Whole guided sampling through ORT: the same keypoints as torch to 1e-3 px.

    Each step's x̂0 differs by ≲1e-5 (normalised units, 1/500 of a pixel at 512²); DDIM
    compounds that over 4 steps, still far below a visible difference."""
    model, folder = tiny_export
    rng = np.random.default_rng(0)
    speech = rng.standard_normal(16000 * 2).astype(np.float32) * 0.1
    features = extract_light_features(speech)
    settings = SamplerSettings(steps=4, eta=0.0, guidance=2.0, context=4)
    step = OnnxFolder(folder).runner("smga_step", weights_hash=state_hash(model))
    ref = synthetic_reference_pose()
    on_torch = SMGADriver(model, feature_kind=features.kind, settings=settings)
    on_ort = SMGADriver(model, feature_kind=features.kind, settings=settings, step=step)
    a = on_torch.generate(features, ref, frame_size=512).points
    b = on_ort.generate(features, ref, frame_size=512).points
    assert a.shape == b.shape == (len(features), 134, 3)
    assert np.abs(a - b).max() < 1e-3


def test_sessions_start_from_a_cached_optimised_graph(tiny_export, tmp_path):
    """The first session saves ONNX Runtime's optimised graph; later ones load it (same
    outputs); a damaged cache file is rebuilt, a re-exported file gets a new one, and an
    unusable cache folder only costs the optimisation."""
    _, folder = tiny_export
    onnx = tmp_path / "smga_step.onnx"
    onnx.write_bytes((folder / "smga_step.onnx").read_bytes())
    inputs = smga_step(SMGA(preset("tiny", dropout=0.0))).sample("second")
    cache = tmp_path / ".ort-cache"
    want = OrtRunner(onnx)(**inputs)["x0"]
    (first,) = cache.iterdir()
    assert first.name == f"smga_step.{cache_key(onnx, ['CPUExecutionProvider'])}.onnx"
    torch.testing.assert_close(OrtRunner(onnx)(**inputs)["x0"], want, rtol=0, atol=0)
    first.write_bytes(b"damaged")
    torch.testing.assert_close(OrtRunner(onnx)(**inputs)["x0"], want, rtol=0, atol=0)
    assert first.stat().st_size > 1000  # rebuilt
    onnx.write_bytes(onnx.read_bytes())  # exported again: a new file time
    os.utime(onnx, ns=(0, first.stat().st_mtime_ns + 10**9))
    OrtRunner(onnx)
    (second,) = cache.iterdir()  # the stale graph is gone
    assert second != first
    shutil.rmtree(cache)
    cache.write_text("not a folder")
    torch.testing.assert_close(OrtRunner(onnx)(**inputs)["x0"], want, rtol=0, atol=0)


def test_stale_or_missing_exports_are_refused(tiny_export, tmp_path):
    model, folder = tiny_export
    other = SMGA(preset("tiny", dropout=0.0))
    with pytest.raises(InputError, match="other weights"):
        OnnxFolder(folder).runner("smga_step", weights_hash=state_hash(other))
    with pytest.raises(InputError, match="no 'unet_step'"):
        OnnxFolder(folder).runner("unet_step", weights_hash=None)
    with pytest.raises(InputError, match="export the models first"):
        OnnxFolder(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="cannot read"):
        OnnxFolder(tmp_path)


def _add_graph(value: float) -> onnx.ModelProto:
    """y = x + value: a network whose version shows in its output."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])
    c = helper.make_tensor("c", TensorProto.FLOAT, [1], [value])
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "add", [x], [y], [c])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_re_exporting_into_a_folder_in_use_replaces_the_network(tmp_path, monkeypatch):
    """A folder that render or the server has run from holds ONNX Runtime's cache of
    optimised graphs, and so does the export's own temporary folder after its checks;
    exporting into the folder again (a new checkpoint, ``--networks``) works, and the runner
    then serves the new network, not a cached graph of the old one."""
    import export.onnx

    version = {"value": 1.0}

    def export_add(spec, tmp_dir, **_):  # noqa: ANN001, ANN202 - the export and its check
        path = tmp_dir / f"{spec.name}.onnx"
        onnx.save(_add_graph(version["value"]), str(path))
        OrtRunner(path)(x=torch.zeros(3))  # checking it caches the optimised graph here
        return {"file": path.name, "export_seconds": 0.0, "checks": [{"max_abs_error": 0.0}]}

    monkeypatch.setattr(export.onnx, "export_network", export_add)
    out, spec = tmp_path / "onnx", SimpleNamespace(name="net")
    write_folder([spec], out, log=lambda _: None)
    assert OrtRunner(out / "net.onnx")(x=torch.zeros(3))["y"].tolist() == [1.0] * 3
    assert list((out / CACHE_DIR).glob("net.*.onnx"))  # the folder is in use
    version["value"] = 2.0
    write_folder([spec], out, log=lambda _: None)
    assert OrtRunner(out / "net.onnx")(x=torch.zeros(3))["y"].tolist() == [2.0] * 3
    assert len(list((out / CACHE_DIR).glob("net.*.onnx"))) == 1  # the stale graph went
    assert not list(out.glob(".export-*"))


def test_a_stopped_export_leaves_the_folder_as_it_was(tiny_export, tmp_path, monkeypatch, capsys):
    """SIGTERM (as a job runner sends it) during an export: the temporary folder goes, the
    existing files and manifest stay, and the exit code is 143."""
    import export.onnx

    _, folder = tiny_export
    out = tmp_path / "onnx"
    write_folder([], out, log=lambda _: None)  # an existing folder with its manifest
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    handler = signal.getsignal(signal.SIGTERM)

    def stopped(spec, tmp_dir, **_):  # noqa: ANN001, ANN202 - the signal arrives mid-export
        (tmp_dir / f"{spec.name}.onnx").write_bytes((folder / "smga_step.onnx").read_bytes())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(export.onnx, "export_network", stopped)
    assert export_main(["--onnx-dir", str(out)]) == 143
    assert "interrupted (SIGTERM)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert signal.getsignal(signal.SIGTERM) == handler  # the previous handler is restored


def test_unusable_destinations_are_refused_before_exporting(tmp_path, monkeypatch, capsys):
    """A file as the folder, an opset the exporter would not write (it raises a request below
    18 to 18 without a word), and a failed export into a new folder leave nothing behind."""
    import export.onnx

    (tmp_path / "file").write_text("x")
    for argv, said in (
        (["--onnx-dir", str(tmp_path / "file")], "is a file; give a folder"),
        (["--onnx-dir", str(tmp_path / "new"), "--opset", "17"], "--opset must be in 18..23"),
    ):
        assert export_main(argv) == 2
        assert said in capsys.readouterr().err

    def broken(spec, tmp_dir, **_):  # noqa: ANN001, ANN202
        (tmp_dir / f"{spec.name}.onnx").write_bytes(b"partial")
        raise InputError("the network does not export")

    monkeypatch.setattr(export.onnx, "export_network", broken)
    assert export_main(["--onnx-dir", str(tmp_path / "new")]) == 2
    assert "does not export" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def _frames(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def shipped_export(shipped_smga_onnx) -> Path:
    return shipped_smga_onnx  # tests/conftest.py: shared with the stage-2 export tests


@pytest.mark.slow
def test_server_engine_runs_smga_on_onnxruntime(shipped_export):
    from engine.engine import Engine
    from server.__main__ import parse_args, settings_from

    args = parse_args(["--backend", "onnxruntime", "--onnx-dir", str(shipped_export)])
    settings = settings_from(args)
    assert settings.driver_options["backend"].name == "onnxruntime"
    from engine.engine import EngineConfig

    engine = Engine(EngineConfig(driver=settings.driver, driver_options=settings.driver_options))
    try:
        step = engine._driver.step
        assert step.backend == "onnxruntime" and step.provider == "CPUExecutionProvider"
    finally:
        engine.executor.shutdown()
    with pytest.raises(InputError, match="--onnx-dir"):
        settings_from(parse_args(["--backend", "onnxruntime"]))


@pytest.mark.slow
def test_export_cli_then_render_on_onnxruntime_equals_torch(tmp_path, capsys, shipped_export):
    """``python -m export.onnx`` on the shipped model, then ``render --backend onnxruntime``:
    the same video as torch (poses agree to ~1e-3 px, so the warp gives the same pixels up to
    rounding and the encoder's reaction to it)."""
    onnx_dir = shipped_export
    audio = tmp_path / "short.wav"
    import soundfile as sf

    samples, rate = sf.read(SPEECH, dtype="float32")
    sf.write(audio, samples[: rate * 2], rate)
    base = ["render", "--audio", str(audio), "--size", "128", "-q", "--driver", "smga"]
    assert cli_main([*base, "--out", str(tmp_path / "torch.mp4")]) == 0
    assert cli_main([*base, "--out", str(tmp_path / "ort.mp4"), "--backend", "onnxruntime",
                     "--onnx-dir", str(onnx_dir)]) == 0  # fmt: skip
    a, b = _frames(tmp_path / "torch.mp4"), _frames(tmp_path / "ort.mp4")
    assert a.shape == b.shape and len(a) == 50
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 0.5
    # The backend flags are checked: ORT without a folder, and a folder for torch.
    assert cli_main([*base, "--out", str(tmp_path / "x.mp4"), "--backend", "onnxruntime"]) == 2
    assert "--onnx-dir" in capsys.readouterr().err
    assert cli_main([*base, "--out", str(tmp_path / "x.mp4"), "--driver", "procedural",
                     "--backend", "onnxruntime", "--onnx-dir", str(onnx_dir)]) == 2  # fmt: skip
    assert not (tmp_path / "x.mp4").exists()
