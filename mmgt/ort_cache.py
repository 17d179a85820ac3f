"""ONNX Runtime sessions that start from a cached optimised graph.

Creating a session optimises the graph first (constant folding, fusions, the CPU's blocked
layouts): about 8 s for the tiny stage-2 UNet here, in every process that loads it. ONNX Runtime
can save the optimised graph (``SessionOptions.optimized_model_filepath``) and load it later
with optimisation off, which takes about 1 s. Such a file is valid only for the ONNX Runtime
version, execution provider and CPU that made it (ONNX Runtime's documentation), so it is kept
under a key of those and of the source file's path, size and modification time, in
``.ort-cache/`` next to the ONNX file. Only the CPU provider is cached, and only files without
external data; anything that goes wrong (a read-only folder, a damaged cache file) falls back
to the plain session.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
from collections.abc import Sequence
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_DIR = ".ort-cache"
CPU_ONLY = ("CPUExecutionProvider",)
MAX_INLINE_BYTES = 1 << 30  # larger files keep their weights outside the graph: not cached


@cache
def _cpu_id() -> str:
    """The CPU model and instruction-set flags (what the optimised layouts depend on)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"
    fields = ("model name", "flags", "Features", "CPU part")
    return "|".join(dict.fromkeys(ln for ln in lines if ln.split(":")[0].strip() in fields))


def cache_key(path: Path, providers: Sequence[str]) -> str:
    import onnxruntime as ort

    stat = path.stat()
    text = "|".join([ort.__version__, ",".join(providers), _cpu_id(), str(path.resolve()),
                     str(stat.st_size), str(stat.st_mtime_ns)])  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cacheable(path: Path, providers: Sequence[str]) -> bool:
    external = path.with_name(path.name + ".data").exists()
    return tuple(providers) == CPU_ONLY and not external and path.stat().st_size < MAX_INLINE_BYTES


def cached_session(path: Path, make_options, providers: Sequence[str]):  # noqa: ANN001, ANN201
    """``ort.InferenceSession(path, make_options(), providers)``, from the cached optimised
    graph when there is one, else creating it and caching the optimised graph."""
    import onnxruntime as ort

    if not _cacheable(path, providers):
        return ort.InferenceSession(str(path), make_options(), providers=list(providers))
    folder = path.parent / CACHE_DIR
    cached = folder / f"{path.stem}.{cache_key(path, providers)}.onnx"
    if cached.is_file():
        options = make_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(cached), options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - a damaged cache file is rebuilt
            log.warning("ignoring the cached optimised graph %s: %s", cached, exc)
            with contextlib.suppress(OSError):
                cached.unlink()
    tmp = folder / f".{cached.name}.{os.getpid()}.tmp"
    try:
        folder.mkdir(exist_ok=True)
        options = make_options()
        options.optimized_model_filepath = str(tmp)
        session = ort.InferenceSession(str(path), options, providers=list(providers))
        tmp.replace(cached)
    except Exception as exc:  # noqa: BLE001 - caching is an optimisation, never a failure
        log.info("not caching the optimised graph of %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return ort.InferenceSession(str(path), make_options(), providers=list(providers))
    for stale in folder.glob(f"{path.stem}.*.onnx"):  # graphs of earlier exports of this file
        if stale != cached:
            with contextlib.suppress(OSError):
                stale.unlink()
    return session
