"""One runner interface for every backend: named tensors in, named tensors out.

``Runner.__call__(**inputs) -> dict[str, Tensor]`` with the tensor names of the export specs
(:mod:`export.specs`), so model code calls torch modules, ONNX Runtime sessions and TensorRT
engines the same way (the StreamDiffusion pattern: drop-in wrappers with one signature).

* :class:`TorchRunner` calls an ``nn.Module`` whose forward takes those names as keywords.
* :class:`OrtRunner` runs an ONNX file in ONNX Runtime and reports the execution provider it
  actually uses (onnxruntime-gpu silently falls back to the CPU when CUDA libraries are
  missing, so the requested provider is not proof).
* :class:`OnnxFolder` reads the folder ``python -m export.onnx`` writes (``manifest.json`` plus
  one ``.onnx`` per network) and refuses files exported from other weights: the manifest
  records a hash of the weights each file was exported from (:func:`state_hash`).

This module sits in ``mmgt`` (not ``engine``) because the offline ``render`` command uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mmgt.errors import InputError

BACKENDS = ("torch", "onnxruntime")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


class Runner(Protocol):
    """A network behind a backend: ``runner(**named_tensors) -> {name: tensor}``."""

    backend: str
    provider: str  # what actually runs it (e.g. "CPUExecutionProvider", "torch:cpu")
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]: ...


class TorchRunner:
    """An ``nn.Module`` as a runner (its forward takes the input names as keywords)."""

    backend = "torch"

    def __init__(
        self, module: nn.Module, input_names: Sequence[str], output_names: Sequence[str]
    ) -> None:
        self.module = module
        self.input_names, self.output_names = tuple(input_names), tuple(output_names)
        device = next(iter(module.parameters()), torch.empty(0)).device
        self.provider = f"torch:{device}"

    @torch.no_grad()
    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        out = self.module(**{k: inputs[k] for k in self.input_names})
        if isinstance(out, Tensor):
            out = (out,)
        return dict(zip(self.output_names, out, strict=True))


def ort_providers(device: str = "cpu") -> list[str]:
    """Execution providers to ask for: TensorRT → CUDA → CPU on ``cuda:N``, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
    return [p for p in wanted if p in available]


class OrtRunner:
    """An ONNX file in ONNX Runtime. Inputs and outputs are torch tensors (CPU)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(int(threads), 1)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=ort_providers(device)
        )
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.provider = self.session.get_providers()[0]  # the one actually in use

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {', '.join(missing)}")
        feed = {n: _numpy(inputs[n]) for n in self.input_names}
        outs = self.session.run(list(self.output_names), feed)
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs, strict=True)}


def _numpy(t: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t
    return t.detach().cpu().contiguous().numpy()


def state_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        v = value.detach().cpu().contiguous()
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}\n".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


class OnnxFolder:
    """The output folder of ``python -m export.onnx``: a manifest and one file per network."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise InputError(
                f"{self.folder} holds no {MANIFEST}: export the models first "
                f"(python -m export.onnx --onnx-dir {self.folder})"
            )
        try:
            self.manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if self.manifest.get("version") != MANIFEST_VERSION:
            raise InputError(f"{path}: manifest version {self.manifest.get('version')!r} is not "
                             f"{MANIFEST_VERSION}; re-run python -m export.onnx")  # fmt: skip

    def entry(self, network: str) -> dict:
        networks = self.manifest.get("networks", {})
        if network not in networks:
            have = ", ".join(networks) or "none"
            raise InputError(f"{self.folder} has no {network!r} network (it has: {have})")
        return networks[network]

    def runner(
        self, network: str, *, weights_hash: str | None, device: str = "cpu", threads: int = 1
    ) -> OrtRunner:
        """An ORT runner for ``network``; refuses a file exported from other weights."""
        entry = self.entry(network)
        if weights_hash is not None and entry.get("weights_sha256") != weights_hash:
            raise InputError(
                f"{self.folder}/{entry['file']} was exported from other weights than the ones "
                "loaded; re-run python -m export.onnx with these weights"
            )
        return OrtRunner(self.folder / entry["file"], device=device, threads=threads)


def add_backend_arguments(parser) -> None:  # noqa: ANN001 - argparse parser or group
    """``--backend`` and ``--onnx-dir``, shared by ``mmgt render`` and ``python -m server``."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="runtime of the SMGA network (onnxruntime needs --onnx-dir)",
    )
    parser.add_argument(
        "--onnx-dir", type=Path, help="python -m export.onnx output for --backend onnxruntime"
    )


def backend_options(args: object, driver: str) -> dict:
    """Driver options for the chosen backend (``driver`` resolved from ``auto``)."""
    backend, onnx_dir = args.backend, args.onnx_dir
    if backend == "torch":
        if onnx_dir is not None:
            raise InputError("--onnx-dir is read by --backend onnxruntime")
        return {}
    if driver != "smga":
        raise InputError(f"--backend {backend} runs the SMGA network; the {driver} driver has "
                         "none (use --driver smga)")  # fmt: skip
    if onnx_dir is None:
        raise InputError(f"--backend {backend} needs --onnx-dir (python -m export.onnx output)")
    return {"backend": backend, "onnx_dir": onnx_dir}
