"""``python -m export.trt``: a **contract test**, not a GPU run.

TensorRT cannot be installed on the project machines and there is no GPU, so the builder runs
here against a recording stand-in for the ``tensorrt`` module (tests/fake_tensorrt.py). The
stand-in really parses the exported ONNX files (with ``onnx``) and reports their real inputs, so
the checks below are about what the builder asks TensorRT to do: the file it parses, one
min/opt/max profile per dynamic input taken from the export spec, the FP16 flag, the timing
cache, and the engine cache key. The one real TensorRT run is the ``gpu`` test at the end,
skipped without a GPU.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch

import export.trt as trt_builder
from export.specs import smga_step
from export.specs_stage2 import stage2_specs
from export.trt import BuildError, GpuInfo, build_engines, cache_key, profile_shapes
from mmgt.errors import InputError
from mmgt.runtime import MANIFEST
from mmgt.runtime_trt import ENGINES, TrtFolder
from mmgt.weights.stage2_models import Stage2Models
from tests.fake_tensorrt import BuilderFlag, make_fake_tensorrt
from tests.helpers import TRT_NETWORKS, tiny_smga

GPU = GpuInfo("NVIDIA Test GPU", (8, 9))
NETWORKS = TRT_NETWORKS


@pytest.fixture(scope="module")
def specs():
    """The specs of the networks in ``trt_onnx`` (tests/conftest.py: exported in the
    background by ``python -m export.onnx --target tensorrt``)."""
    stage2 = [s for s in stage2_specs(Stage2Models.random("tiny")) if s.name in NETWORKS]
    return [smga_step(tiny_smga(0)), *stage2]


@pytest.fixture
def onnx_dir(trt_onnx, tmp_path) -> Path:
    copy = tmp_path / "onnx"
    shutil.copytree(trt_onnx, copy)
    return copy


def _calls(trt, kind: str) -> list[tuple]:
    return [c for c in trt.calls if c[0] == kind]


def test_builder_contract(onnx_dir, specs):
    trt = make_fake_tensorrt()
    index = build_engines(onnx_dir, trt=trt, gpu=GPU, log=lambda _: None)
    parsed = [Path(c[1]) for c in _calls(trt, "parse_from_file")]
    assert parsed == [onnx_dir / f"{n}.onnx" for n in NETWORKS]
    # FP16 on every network, and exactly one optimisation profile each.
    assert _calls(trt, "set_flag") == [("set_flag", BuilderFlag.FP16)] * len(NETWORKS)
    profiles = [c[1] for c in _calls(trt, "add_optimization_profile")]
    assert len(profiles) == len(NETWORKS)
    # Every dynamic input gets min/opt/max from its export spec; static inputs get none.
    for spec, profile in zip(specs, profiles, strict=True):
        dynamic = {n for n in spec.inputs if spec.dynamic.get(n)}
        assert set(profile) == dynamic
        for name, (lo, opt, hi) in profile.items():
            for axis, a in spec.dynamic[name].items():
                assert (lo[axis], opt[axis], hi[axis]) == (a.min, a.opt, a.max)
            sample = spec.sample("opt")[name]
            assert list(opt) == list(sample.shape)
    smga = profiles[0]
    assert smga["x"] == ((1, 2, 402), (2, 12, 402), (4, 16, 402))  # tiny SMGA: 16 frames
    # The timing cache starts empty, is passed on from network to network and saved.
    created = [c[1] for c in _calls(trt, "create_timing_cache")]
    assert created[0] == b"" and b"timed:" in created[-1]
    engine_dir = onnx_dir / "trt"
    assert (engine_dir / "timing.cache").read_bytes().count(b"timed:") == len(NETWORKS)
    # The index names each plan with its key and the weights it was exported from.
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    saved = json.loads((engine_dir / ENGINES).read_text())
    assert saved == index
    for name in NETWORKS:
        entry = index["networks"][name]
        assert (engine_dir / entry["file"]).read_bytes().startswith(b"FAKEPLAN")
        assert entry["file"] == f"{name}-{entry['key'][:16]}.plan"
        assert entry["weights_sha256"] == manifest["networks"][name]["weights_sha256"]
        assert entry["gpu"] == GPU.name and entry["precision"] == ["fp16"]
        assert entry["profile"] == {
            n: {"min": list(s[0]), "opt": list(s[1]), "max": list(s[2])}
            for n, s in profile_shapes(manifest["networks"][name]).items()
        }


def test_engine_cache_key_reuse_and_invalidation(onnx_dir):
    build_engines(onnx_dir, trt=make_fake_tensorrt(), gpu=GPU, log=lambda _: None)
    engine_dir = onnx_dir / "trt"
    plans = sorted(p.name for p in engine_dir.glob("*.plan"))
    again = make_fake_tensorrt()
    build_engines(onnx_dir, trt=again, gpu=GPU, log=lambda _: None)
    assert not _calls(again, "Builder")  # everything reused from the cache
    newer = make_fake_tensorrt(version="10.9.0")
    build_engines(onnx_dir, trt=newer, gpu=GPU, networks=["pose_guider"], log=lambda _: None)
    assert len(_calls(newer, "parse_from_file")) == 1
    now = sorted(p.name for p in engine_dir.glob("*.plan"))
    assert len(now) == len(plans) and now != plans  # the superseded plan was removed
    forced = make_fake_tensorrt(version="10.9.0")
    build_engines(onnx_dir, trt=forced, gpu=GPU, networks=["pose_guider"], force=True,
                  log=lambda _: None)  # fmt: skip
    assert len(_calls(forced, "parse_from_file")) == 1
    # The key covers everything a plan depends on.
    profile = {"x": ([1], [2], [4])}
    base = cache_key("a" * 64, "10.3.0", GPU, profile)
    assert len({base, cache_key("b" * 64, "10.3.0", GPU, profile),
                cache_key("a" * 64, "10.4.0", GPU, profile),
                cache_key("a" * 64, "10.3.0", GpuInfo("other", (9, 0)), profile),
                cache_key("a" * 64, "10.3.0", GPU, {"x": ([1], [2], [8])})}) == 5  # fmt: skip
    # A changed ONNX file gets a new key.
    before = json.loads((engine_dir / ENGINES).read_text())["networks"]["audio_proj"]["key"]
    model = onnx.load(str(onnx_dir / "audio_proj.onnx"))
    model.doc_string = "changed"
    onnx.save(model, str(onnx_dir / "audio_proj.onnx"))
    build_engines(onnx_dir, trt=make_fake_tensorrt(version="10.9.0"), gpu=GPU,
                  networks=["audio_proj"], log=lambda _: None)  # fmt: skip
    after = json.loads((engine_dir / ENGINES).read_text())["networks"]["audio_proj"]["key"]
    assert after != before


def test_parser_and_build_failures_are_reported(onnx_dir):
    broken = make_fake_tensorrt(parser_errors=("Unsupported operator Foo",))
    with pytest.raises(BuildError, match="Unsupported operator Foo"):
        build_engines(onnx_dir, trt=broken, gpu=GPU, log=lambda _: None)
    with pytest.raises(BuildError, match="could not build"):
        build_engines(onnx_dir, trt=make_fake_tensorrt(build_fails=True), gpu=GPU,
                      log=lambda _: None)  # fmt: skip
    assert not list((onnx_dir / "trt").glob("*.plan"))  # nothing partial left behind
    with pytest.raises(InputError, match="has no network 'unet'"):
        build_engines(onnx_dir, trt=make_fake_tensorrt(), gpu=GPU, networks=["unet"])


def test_onnxruntime_target_exports_are_refused(onnx_dir):
    path = onnx_dir / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["networks"]["vae_decoder"]["domains"] = ["com.microsoft"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="--target tensorrt"):
        build_engines(onnx_dir, trt=make_fake_tensorrt(), gpu=GPU)


def test_cli_without_tensorrt_exits_2_with_one_clear_line(onnx_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails, as on these machines
    assert trt_builder.main(["--onnx-dir", str(onnx_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT is not installed" in err[0]
    # With TensorRT but no GPU: the GPU is what is missing.
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt())
    if not torch.cuda.is_available():
        assert trt_builder.main(["--onnx-dir", str(onnx_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "no CUDA GPU" in err[0]
    assert trt_builder.main(["--onnx-dir", str(onnx_dir / "missing")]) == 2
    assert "export the models first" in capsys.readouterr().err


def test_engine_folder_refuses_stale_or_foreign_engines(onnx_dir, monkeypatch):
    build_engines(onnx_dir, trt=make_fake_tensorrt(), gpu=GPU, log=lambda _: None)
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_tensorrt(version="10.9.0"))
    folder = TrtFolder(onnx_dir / "trt")
    with pytest.raises(InputError, match="other weights"):
        folder.runner("pose_guider", weights_hash="0" * 64)
    with pytest.raises(InputError, match="built by TensorRT 10.3.0"):
        folder.runner("pose_guider", weights_hash=None)
    with pytest.raises(InputError, match="no 'unet_step' engine"):
        folder.runner("unet_step", weights_hash=None)
    with pytest.raises(InputError, match="build the engines first"):
        TrtFolder(onnx_dir)


@pytest.mark.gpu
def test_tensorrt_engine_equals_torch_on_a_gpu(trt_onnx, specs, tmp_path):
    """The real thing: needs TensorRT and a CUDA GPU (skipped on the project machines)."""
    trt = pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from mmgt.runtime import TorchRunner

    gpu = trt_builder.detect_gpu("cuda:0")
    build_engines(trt_onnx, tmp_path, trt=trt, gpu=gpu, networks=["pose_guider"])
    spec = next(s for s in specs if s.name == "pose_guider")
    runner = TrtFolder(tmp_path).runner("pose_guider", weights_hash=None, host_outputs=True)
    x = spec.sample("second")
    got = runner(**x)["pose_features"]
    want = TorchRunner(spec.module, spec.inputs, spec.outputs)(**x)["pose_features"]
    torch.testing.assert_close(got.float(), want, rtol=1e-2, atol=1e-2)  # fp16 engine
