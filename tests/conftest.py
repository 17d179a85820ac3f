"""Test-suite hooks: ``gpu`` tests are skipped on machines without a CUDA GPU; aioice's
per-thread mDNS state is reset after each test; fixtures that more than one module needs and
that take long to build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
