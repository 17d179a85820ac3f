"""Test-suite hooks: ``gpu`` tests are skipped on machines without a CUDA GPU; aioice's
per-thread mDNS state is reset after each test; the ONNX exports the tests need start in the
background when collection ends (tests/background_export.py), and the tests that need them run
last; fixtures that more than one module needs and that take long to build."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmgt.models.stage2_steps import STAGE2_NETWORKS
from mmgt.weights.smga import save_smga_safetensors
from tests.background_export import BackgroundExport, ExportJob, make_root
from tests.helpers import TRT_NETWORKS, tiny_smga

EXPORTS = pytest.StashKey[list[BackgroundExport]]()


@pytest.fixture(autouse=True)
def _fresh_aioice_mdns() -> Iterator[None]:
    """aioice keeps its mDNS resolver and lock per thread, and the lock is bound to the first
    event loop that waits on it; a server runs one loop, but the tests run one per test."""
    yield
    import sys

    if ice := sys.modules.get("aioice.ice"):
        ice._mdns.__dict__.clear()


@pytest.fixture(autouse=True)
def _realtime_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``realtime`` run with the background export paused."""
    exports = request.config.stash.get(EXPORTS, [])
    if not exports or request.node.get_closest_marker("realtime") is None:
        yield
        return
    with contextlib.ExitStack() as stack:
        for export in exports:
            stack.enter_context(export.paused())
        yield


TINY_SEEDS = {"tiny_smga_onnx": 3, "trt_onnx": 0}
EXPORTED = ("tiny_smga_onnx", "shipped_smga_onnx", "stage2_onnx", "trt_onnx")  # job order


def _export_jobs(root: Path, fixtures: set[str]) -> list[ExportJob]:
    """The exports behind ``fixtures``, one job per fixture, named after it (tiny SMGA
    weights are written to ``root`` for them)."""
    if "stage2_onnx" in fixtures:  # it starts from a copy of the shipped SMGA's folder
        fixtures = fixtures | {"shipped_smga_onnx"}
    tiny = {}
    for fixture in fixtures & set(TINY_SEEDS):
        tiny[fixture] = str(root / f"smga_tiny_seed{TINY_SEEDS[fixture]}.safetensors")
        save_smga_safetensors(tiny_smga(TINY_SEEDS[fixture]), tiny[fixture])
    args = {
        "shipped_smga_onnx": [],
        "tiny_smga_onnx": ["--smga-weights", tiny.get("tiny_smga_onnx")],
        "stage2_onnx": ["--stage2-preset", "tiny", "--networks", ",".join(STAGE2_NETWORKS)],
        "trt_onnx": ["--target", "tensorrt", "--stage2-preset", "tiny",
                     "--networks", ",".join(TRT_NETWORKS), "--smga-weights", tiny.get("trt_onnx")],
    }  # fmt: skip
    seeds = {"stage2_onnx": "shipped_smga_onnx"}
    return [ExportJob(f, args[f], seeds.get(f)) for f in EXPORTED if f in fixtures]


def _start_exports(config: pytest.Config, fixtures: set[str]) -> None:
    root = make_root()
    export = BackgroundExport(_export_jobs(root, fixtures), root)
    config.stash.setdefault(EXPORTS, []).append(export)
    export.start()


@pytest.fixture(scope="session")
def exported(request: pytest.FixtureRequest) -> Callable[[str], Path]:
    """Fixture name → the finished folder of its background export."""

    def folder(name: str) -> Path:
        exports = request.config.stash.setdefault(EXPORTS, [])
        if not any(name in e.jobs for e in exports):  # a test selected some other way
            _start_exports(request.config, {name})
        return next(e for e in exports if name in e.jobs).result(name)

    return folder


@pytest.fixture(scope="session")
def shipped_smga_onnx(exported) -> Path:
    """``python -m export.onnx`` on the shipped CPU SMGA model (read-only: copy to modify)."""
    return exported("shipped_smga_onnx")


@pytest.fixture(scope="session")
def tiny_smga_onnx(exported) -> Path:
    """``tiny_smga(3)`` exported for ONNX Runtime (read-only)."""
    return exported("tiny_smga_onnx")


@pytest.fixture(scope="session")
def stage2_onnx(exported) -> Path:
    """The shipped SMGA and the tiny stage-2 networks exported into one folder, by the CLI
    (read-only: copy to modify)."""
    return exported("stage2_onnx")


@pytest.fixture(scope="session")
def trt_onnx(exported) -> Path:
    """A ``--target tensorrt`` export of ``tiny_smga(0)`` and :data:`TRT_NETWORKS` of the
    random tiny stage-2 models (plain ONNX ops only; read-only)."""
    return exported("trt_onnx")


def _uses_export(item: pytest.Item) -> bool:
    return any(f in EXPORTED for f in getattr(item, "fixturenames", ()))


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    used = {f for item in session.items for f in getattr(item, "fixturenames", ())}
    if fixtures := used & set(EXPORTED):
        _start_exports(session.config, fixtures)


def pytest_unconfigure(config: pytest.Config) -> None:
    for export in config.stash.get(EXPORTS, []):
        export.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    # Tests that need an export run last (in their order), giving the exports the most time.
    items.sort(key=_uses_export)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
