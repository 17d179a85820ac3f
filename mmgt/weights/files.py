"""Reading weight files the user names, with errors that say what is wrong with the file.

Pickled checkpoints (``.pt``/``.pth``/``.bin``) are read with ``torch.load(weights_only=True)``
only: a pickle that would build arbitrary objects (run code) is refused. A file that is not a
checkpoint at all — a download cut short, an HTML error page saved under the weights' name — is
reported as damaged, not as unsafe, since re-downloading is the fix. Safetensors files get the
same treatment.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from mmgt.errors import WeightsError


def _is_checkpoint_container(path: Path) -> bool:
    """Whether the bytes are a torch zip archive or a pickle (legacy torch files, raw pickles):
    what an unpickling refusal then means is "unsafe", while anything else is not a checkpoint
    (an HTML page, an empty or random file)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # zip / pickle PROTO opcode


def _damaged(path: Path, exc: BaseException) -> WeightsError:
    size = path.stat().st_size if path.is_file() else 0
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if "WeightsUnpickler" in ln or "operand" in ln), None)
    detail = detail or (lines[0] if lines else type(exc).__name__)
    return WeightsError(
        f"{path} ({size:,} bytes) is not a readable checkpoint: the file is damaged or incomplete "
        f"(a download cut short, or an error page saved in its place?); {detail}"
    )


def load_torch_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a :class:`WeightsError` naming
    the problem: damaged or incomplete, or carrying Python objects (code) besides tensors."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _is_checkpoint_container(path):
            raise _damaged(path, exc) from exc
        said = next((ln.strip() for ln in str(exc).splitlines() if "WeightsUnpickler" in ln),
                    str(exc).splitlines()[0])  # fmt: skip
        raise WeightsError(
            f"refusing to load {path}: it holds Python objects besides tensors and plain data, "
            f"and only weights-only checkpoints are accepted (torch.load(weights_only=True) "
            f"said: {said})"
        ) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc


def load_safetensors_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every tensor of a ``.safetensors`` file (CPU)."""
    path = Path(path)
    try:
        return load_file(str(path))
    except SafetensorError as exc:
        raise _damaged(path, exc) from exc
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike[str]) -> Iterator[Any]:
    """``safe_open(path, "pt")`` (metadata, shapes, single tensors without loading the rest)."""
    path = Path(path)
    try:
        handle = safe_open(str(path), framework="pt")
    except SafetensorError as exc:
        raise _damaged(path, exc) from exc
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    with handle as f:
        yield f


def read_config(load: Callable[..., Any], folder: str | os.PathLike[str]) -> Any:
    """``load(folder, local_files_only=True)`` for a transformers/diffusers config, with an
    unreadable ``config.json`` (not JSON, wrong fields) as a :class:`WeightsError`."""
    try:
        return load(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise WeightsError(f"{Path(folder) / 'config.json'} cannot be used: {exc}") from exc
