"""Test-suite hooks: ``gpu`` tests are skipped on machines without a CUDA GPU; fixtures that
more than one module needs and that take long to build."""

from __future__ import annotations

from pathlib import Path

import pytest


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
