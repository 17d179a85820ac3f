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
* TensorRT engines (``python -m export.trt``) run through :mod:`mmgt.runtime_trt`.
* :class:`~mmgt.backend.Backend` (in :mod:`mmgt.backend`, which needs no torch, so the
  command line parses quickly) is the user's choice: :meth:`Backend.runner` turns a torch
  module into the runner of that backend, so the SMGA driver and the diffusion renderer pick
  their backend the same way.

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


def check_device(device: str) -> torch.device:
    """``--device`` as torch understands it, refused with one line when this machine or this
    torch build cannot use it (a CPU-only torch, a GPU that is not there)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--device {device!r} is not a device (cpu, cuda or cuda:N)") from exc
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise InputError(f"--device {device}: only cpu and cuda:N are supported")
    if not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else (
            "no CUDA GPU is visible")  # fmt: skip
        raise InputError(f"--device {device}: {why}")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA GPU(s)")
    return dev


def ort_providers(device: str = "cpu") -> list[str]:
    """Execution providers to ask for: TensorRT → CUDA → CPU on ``cuda:N``, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *wanted]
    return [p for p in wanted if p in available]


def foreign_session(
    path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
):  # noqa: ANN201 - onnxruntime.InferenceSession
    """An ONNX Runtime session for a released ONNX file that is not one of our exports (DWPose,
    the vocal separator): CPU or CUDA, ``threads`` intra-op threads (default: all cores), and a
    file ORT cannot read reported as a :class:`~mmgt.errors.WeightsError`."""
    import onnxruntime as ort

    from mmgt.errors import WeightsError

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = max(int(threads), 1)
    opts.log_severity_level = 3
    providers = [p for p in ort_providers(device) if p != "TensorrtExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types
        raise WeightsError(f"{path}: ONNX Runtime cannot load it ({exc})") from exc


class OrtRunner:
    """An ONNX file in ONNX Runtime. Inputs and outputs are torch tensors (CPU)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int = 1):
        import onnxruntime as ort

        from mmgt.ort_cache import cached_session

        def options() -> ort.SessionOptions:
            o = ort.SessionOptions()
            o.intra_op_num_threads = max(int(threads), 1)
            o.inter_op_num_threads = 1
            o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            o.log_severity_level = 3  # errors only: graph-optimiser notes are not for users
            return o

        self.path = Path(path)
        # The optimised graph is cached next to the file (mmgt/ort_cache.py): ~8 s → ~1 s
        # to open the tiny stage-2 UNet.
        self.session = cached_session(self.path, options, ort_providers(device))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self._dtypes = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}
        self.provider = self.session.get_providers()[0]  # the one actually in use

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        """Inputs on any device and dtype (cast to the file's input types); CPU outputs."""
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {', '.join(missing)}")
        feed = {n: _numpy(inputs[n], self._dtypes[n]) for n in self.input_names}
        outs = self.session.run(list(self.output_names), feed)
        return {n: torch.from_numpy(o) for n, o in zip(self.output_names, outs, strict=True)}


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def _numpy(t: Tensor | np.ndarray, dtype: type | None = None) -> np.ndarray:
    if not isinstance(t, np.ndarray):
        t = t.detach().cpu().contiguous().numpy()
    return t if dtype is None or t.dtype == dtype else t.astype(dtype)


def state_hash(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        v = value.detach().cpu().contiguous()
        h.update(f"{name}|{v.dtype}|{tuple(v.shape)}\n".encode())
        h.update(v.view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()


def read_index(path: Path, version: int, *, missing: str, rerun: str) -> dict:
    """A versioned JSON index (export manifest, engine index), or an :class:`InputError` that
    says what to run: ``missing`` when the file is absent, ``rerun`` for another version."""
    if not path.is_file():
        raise InputError(f"{path.parent} holds no {path.name}: {missing}")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if index.get("version") != version:
        raise InputError(f"{path}: version {index.get('version')!r} is not {version}; "
                         f"re-run {rerun}")  # fmt: skip
    return index


def index_entry(index: dict, folder: Path, network: str, what: str) -> dict:
    """``index["networks"][network]``, or an :class:`InputError` listing what there is."""
    networks = index.get("networks", {})
    if network not in networks:
        have = ", ".join(networks) or "none"
        raise InputError(f"{folder} has no {network!r} {what} (it has: {have})")
    return networks[network]


class OnnxFolder:
    """The output folder of ``python -m export.onnx``: a manifest and one file per network."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.manifest = read_index(
            self.folder / MANIFEST, MANIFEST_VERSION,
            missing=f"export the models first (python -m export.onnx --onnx-dir {self.folder})",
            rerun="python -m export.onnx",
        )  # fmt: skip

    def entry(self, network: str) -> dict:
        return index_entry(self.manifest, self.folder, network, "network")

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
