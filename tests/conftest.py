"""Test-suite hooks: ``gpu`` tests are skipped on machines without a CUDA GPU; aioice's
per-thread mDNS state is reset after each test; the stage-2 ONNX export starts in the
background when collection ends (tests/background_export.py); fixtures that more than one
module needs and that take long to build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.background_export import BackgroundExport

STAGE2_EXPORT = pytest.StashKey[BackgroundExport]()


@pytest.fixture(autouse=True)
def _fresh_aioice_mdns() -> Iterator[None]:
    """aioice keeps its mDNS resolver and lock per thread, and the lock is bound to the first
    event loop that waits on it; a server runs one loop, but the tests run one per test."""
    yield
    import sys

    if ice := sys.modules.get("aioice.ice"):
        ice._mdns.__dict__.clear()


@pytest.fixture(scope="session")
def shipped_smga_onnx(tmp_path_factory) -> Path:
    """``python -m export.onnx`` on the shipped CPU SMGA model (read-only: copy to modify)."""
    from export.onnx import main as export_main

    onnx_dir = tmp_path_factory.mktemp("shipped") / "onnx"
    assert export_main(["--onnx-dir", str(onnx_dir)]) == 0
    return onnx_dir


@pytest.fixture(autouse=True)
def _realtime_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests marked ``realtime`` run with the background export paused."""
    export = request.config.stash.get(STAGE2_EXPORT, None)
    if export is None or request.node.get_closest_marker("realtime") is None:
        yield
        return
    with export.paused():
        yield


@pytest.fixture(scope="session")
def stage2_onnx(request: pytest.FixtureRequest) -> Path:
    """The shipped SMGA and the tiny stage-2 networks exported into one folder, by the CLI
    (read-only: copy to modify)."""
    export = request.config.stash.get(STAGE2_EXPORT, None)
    if export is None:  # not started at collection (a test selected some other way)
        export = request.config.stash[STAGE2_EXPORT] = BackgroundExport()
        export.start()
    return export.result()


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("stage2_onnx" in getattr(item, "fixturenames", ()) for item in session.items):
        session.config.stash[STAGE2_EXPORT] = export = BackgroundExport()
        export.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    if export := config.stash.get(STAGE2_EXPORT, None):
        export.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
