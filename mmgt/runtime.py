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
* :class:`Backend` is the user's choice (``--backend``, ``--onnx-dir``, ``--engine-dir``):
  :meth:`Backend.runner` turns a torch module into the runner of that backend, so the SMGA
  driver and the diffusion renderer pick their backend the same way.

This module sits in ``mmgt`` (not ``engine``) because the offline ``render`` command uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from mmgt.errors import InputError

BACKENDS = ("torch", "onnxruntime", "tensorrt")
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


@dataclass(frozen=True)
class Backend:
    """Which runtime runs the networks, and where their exported files are.

    ``onnxruntime`` reads ``onnx_dir`` (``python -m export.onnx``); ``tensorrt`` reads
    ``engine_dir`` (``python -m export.trt``; default ``onnx_dir/trt``).
    """

    name: str = "torch"
    onnx_dir: Path | None = None
    engine_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise InputError(f"unknown backend {self.name!r}; choose one of {', '.join(BACKENDS)}")
        if self.name == "torch" and (self.onnx_dir or self.engine_dir):
            raise InputError("--onnx-dir and --engine-dir are read by --backend onnxruntime or "
                             "tensorrt")  # fmt: skip
        if self.name == "onnxruntime" and self.onnx_dir is None:
            raise InputError("--backend onnxruntime needs --onnx-dir (python -m export.onnx "
                             "output)")  # fmt: skip
        if self.name == "tensorrt" and self.onnx_dir is None and self.engine_dir is None:
            raise InputError("--backend tensorrt needs --onnx-dir (engines in ONNX_DIR/trt) or "
                             "--engine-dir (python -m export.trt output)")  # fmt: skip

    @property
    def engines(self) -> Path:
        """The folder of TensorRT engines."""
        return self.engine_dir if self.engine_dir is not None else Path(self.onnx_dir) / "trt"

    def runner(
        self, network: str, module: nn.Module, *, device: str = "cpu", threads: int = 1,
        host_outputs: bool = True,
    ) -> Runner:  # fmt: skip
        """``module`` (its ``input_names``/``output_names``) as a runner of this backend.

        Exported files are refused when they were made from other weights than ``module``'s.
        ``host_outputs``: TensorRT returns CPU tensors (else CUDA tensors on ``device``).
        """
        if self.name == "torch":
            return TorchRunner(module, module.input_names, module.output_names)
        weights = state_hash(module)
        if self.name == "onnxruntime":
            return OnnxFolder(self.onnx_dir).runner(
                network, weights_hash=weights, device=device, threads=threads
            )
        from mmgt.runtime_trt import TrtFolder

        trt_device = device if str(device).startswith("cuda") else "cuda:0"
        return TrtFolder(self.engines).runner(
            network, weights_hash=weights, device=trt_device, host_outputs=host_outputs
        )


def add_backend_arguments(parser) -> None:  # noqa: ANN001 - argparse parser or group
    """``--backend``, ``--onnx-dir`` and ``--engine-dir``, shared by ``mmgt render`` and
    ``python -m server``."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="runtime of the networks: SMGA and the diffusion renderer (onnxruntime needs "
        "--onnx-dir, tensorrt --onnx-dir or --engine-dir)",
    )
    parser.add_argument(
        "--onnx-dir", type=Path, help="python -m export.onnx output (--backend onnxruntime)"
    )
    parser.add_argument(
        "--engine-dir", type=Path,
        help="python -m export.trt output (--backend tensorrt; default ONNX_DIR/trt)",
    )  # fmt: skip


def backend_from_args(args: object, *, driver: str, renderer: str) -> Backend:
    """The :class:`Backend` of the command line, checked against the pipeline's networks
    (``driver`` resolved from ``auto``): one of them must have a network to run."""
    backend = Backend(args.backend, args.onnx_dir, args.engine_dir)
    if backend.name != "torch" and driver != "smga" and renderer != "diffusion":
        raise InputError(f"--backend {backend.name} runs networks, and the {driver} driver and "
                         f"the {renderer} renderer have none (use --driver smga or --renderer "
                         "diffusion)")  # fmt: skip
    return backend
