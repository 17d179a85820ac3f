"""The user's choice of runtime for the networks: ``--backend``, ``--onnx-dir``, ``--engine-dir``.

Kept apart from :mod:`mmgt.runtime` (the runners) because it needs no torch: the command lines
of ``mmgt`` and ``python -m server`` declare these options without importing torch, so
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmgt.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from mmgt.runtime import Runner

BACKENDS = ("torch", "onnxruntime", "tensorrt")


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
        from mmgt.runtime import OnnxFolder, TorchRunner, state_hash  # noqa: PLC0415 - torch

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
