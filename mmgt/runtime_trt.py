"""The TensorRT backend behind the runner API: :class:`TrtRunner` and :class:`TrtFolder`.

**Not run on a GPU here.** Written against the documented TensorRT 10 Python API (``Runtime``,
``deserialize_cuda_engine``, ``IExecutionContext.set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``); the project machines have no GPU and cannot install TensorRT. Only the
folder checks (:class:`TrtFolder`'s refusals) are tested here; the GPU test is skipped.

``TrtFolder`` reads the ``engines.json`` that ``python -m export.trt`` writes and refuses engines
built from other weights, by another TensorRT version or for another GPU. ``tensorrt`` is imported
only when an engine is loaded, so this module imports on any machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from mmgt.errors import InputError, MissingDependencyError
from mmgt.runtime import index_entry, read_index

ENGINES = "engines.json"
ENGINES_VERSION = 1
_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
           "INT8": torch.int8, "UINT8": torch.uint8, "INT32": torch.int32,
           "INT64": torch.int64, "BOOL": torch.bool, "FP8": torch.float8_e4m3fn}  # fmt: skip


def _tensorrt() -> ModuleType:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise MissingDependencyError(
            "TensorRT is not installed (pip install 'mmgt[gpu]' on a machine with an NVIDIA GPU)"
        ) from exc
    return tensorrt


def torch_dtype(trt: ModuleType, dtype: object) -> torch.dtype:
    """The torch dtype of a ``tensorrt.DataType``."""
    for name, value in _DTYPES.items():
        if getattr(trt.DataType, name, None) == dtype:
            return value
    raise TypeError(f"TensorRT dtype {dtype} has no torch equivalent here")


class TrtRunner:
    """A serialized TensorRT engine (``.plan``) as a runner.

    Inputs are moved to ``device`` and cast to the engine's input dtypes (fp16 where the engine
    takes fp16). Outputs are CUDA tensors on ``device``, written on the current torch stream;
    ``host_outputs=True`` copies them to the CPU (a drop-in for :class:`OrtRunner` callers).
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], device: str = "cuda:0", *,
                 host_outputs: bool = False) -> None:  # fmt: skip
        trt = _tensorrt()
        self.path, self.device = Path(engine_path), torch.device(device)
        if self.device.type != "cuda":
            raise InputError(f"TensorRT runs on a CUDA device, not {device}")
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"no CUDA GPU is available for {device}")
        self.host_outputs = host_outputs
        with torch.cuda.device(self.device):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise InputError(f"TensorRT cannot load {self.path} (built by another TensorRT "
                                 "version or for another GPU?); rebuild it with "
                                 "python -m export.trt --force")  # fmt: skip
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = tuple(n for n in names if is_input[n])
        self.output_names = tuple(n for n in names if not is_input[n])
        self.dtypes = {n: torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.provider = f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(self.device)}"

    def __call__(self, **inputs: Tensor) -> dict[str, Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.path.name}: missing inputs {', '.join(missing)}")
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            feed = {}
            for name in self.input_names:
                t = torch.as_tensor(inputs[name]).to(self.device, self.dtypes[name]).contiguous()
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    raise ValueError(f"{self.path.name}: input {name} of shape {tuple(t.shape)} "
                                     "is outside the engine's optimisation profile")  # fmt: skip
                feed[name] = t
            outs = {
                n: torch.empty(
                    tuple(self.context.get_tensor_shape(n)),
                    dtype=self.dtypes[n],
                    device=self.device,
                )  # fmt: skip
                for n in self.output_names
            }
            for name, t in (feed | outs).items():
                self.context.set_tensor_address(name, t.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.path.name}: TensorRT execution failed (see its log)")
        # ``feed`` lives until here; later reuse of its memory is ordered on the same stream.
        return {n: t.cpu() for n, t in outs.items()} if self.host_outputs else outs


class TrtFolder:
    """The output of ``python -m export.trt``: ``engines.json`` plus one ``.plan`` per network."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.index = read_index(
            self.folder / ENGINES, ENGINES_VERSION,
            missing="build the engines first (python -m export.trt --onnx-dir ONNX_DIR "
            f"--engine-dir {self.folder})",
            rerun="python -m export.trt",
        )  # fmt: skip

    def entry(self, network: str) -> dict:
        return index_entry(self.index, self.folder, network, "engine")

    def runner(self, network: str, *, weights_hash: str | None, device: str = "cuda:0",
               host_outputs: bool = False) -> TrtRunner:  # fmt: skip
        """A runner for ``network``; refuses engines from other weights, TensorRT or GPUs."""
        entry = self.entry(network)
        plan = self.folder / entry["file"]
        rebuild = "re-run python -m export.trt"
        if weights_hash is not None and entry.get("weights_sha256") != weights_hash:
            raise InputError(f"{plan} was built from an ONNX file exported from other weights "
                             f"than the ones loaded; re-export them, then {rebuild}")  # fmt: skip
        if not plan.is_file():
            raise InputError(f"{plan} is missing; {rebuild}")
        trt = _tensorrt()
        if entry.get("trt_version") != trt.__version__:
            raise InputError(f"{plan} was built by TensorRT {entry.get('trt_version')}, this is "
                             f"{trt.__version__}; {rebuild}")  # fmt: skip
        if torch.cuda.is_available():
            index = torch.device(device).index or 0
            have = list(torch.cuda.get_device_capability(index))
            name = torch.cuda.get_device_name(index)
            if (entry.get("gpu"), entry.get("capability")) != (name, have):
                raise InputError(f"{plan} was built for {entry.get('gpu')}, this is {name}; "
                                 f"{rebuild} on this machine")  # fmt: skip
        return TrtRunner(plan, device, host_outputs=host_outputs)
