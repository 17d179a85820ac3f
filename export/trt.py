"""python -m export.trt: build TensorRT fp16 engines from the ``python -m export.onnx`` folder.

    python -m export.onnx --target tensorrt --onnx-dir onnx/ [--weights-dir WEIGHTS]
    python -m export.trt --onnx-dir onnx/            # engines in onnx/trt/, index engines.json
    mmgt render --backend tensorrt --onnx-dir onnx/ --device cuda:0 …

**Not run on a GPU here.** This module is written against the documented TensorRT 10 Python API
(``Builder``, ``OnnxParser.parse_from_file``, ``IBuilderConfig``, optimisation profiles, timing
cache, ``build_serialized_network``); the project machines have no GPU and cannot install
TensorRT, so it is checked only by a contract test against a recording stand-in
(tests/fake_tensorrt.py). See docs/tensorrt.md.

Per network of the manifest: parse the ONNX file (external data included), set the FP16 flag,
add one optimisation profile whose min/opt/max shapes come from the manifest's axes, reuse the
engine dir's timing cache, and build. Engines are cached under a key over everything the plan
depends on (:func:`cache_key`) and indexed in ``engines.json`` with the weights hash the ONNX
file was exported from, so :class:`mmgt.runtime_trt.TrtFolder` can refuse stale engines.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from mmgt.errors import InputError, MissingDependencyError, MMGTError
from mmgt.runtime import MANIFEST, MANIFEST_VERSION, read_index
from mmgt.runtime_trt import ENGINES, ENGINES_VERSION

PROG = "python -m export.trt"
TIMING_CACHE = "timing.cache"
PRECISION = ("fp16",)  # the only precision built (INT8/FP8 need calibration or Q/DQ models)
Shapes = dict[str, tuple[list[int], list[int], list[int]]]  # input → (min, opt, max)


class BuildError(MMGTError):
    """TensorRT could not parse or build a network."""


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for (a plan only runs on the GPU model it was built on)."""

    name: str
    capability: tuple[int, int]

    @property
    def label(self) -> str:
        return f"{self.name} (sm_{self.capability[0]}{self.capability[1]})"


def profile_shapes(entry: dict) -> Shapes:
    """(min, opt, max) shapes of every dynamic input of a manifest entry; static inputs omitted."""
    axes, shapes = entry["axes"], {}
    for name, spec in entry["inputs"].items():
        dims = spec["shape"]
        if all(isinstance(d, int) for d in dims):
            continue
        shapes[name] = tuple(
            [d if isinstance(d, int) else int(axes[d][which]) for d in dims]
            for which in ("min", "opt", "max")
        )
    return shapes


def onnx_files(path: Path) -> list[Path]:
    """The ONNX file and its external data files (what the parser reads)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations: set[str] = set()

    def visit(graph) -> None:  # noqa: ANN001 - onnx.GraphProto
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                tensors += [attr.t] if attr.HasField("t") else []
                tensors += list(attr.tensors)
                for sub in [attr.g] if attr.HasField("g") else []:
                    visit(sub)
                for sub in attr.graphs:
                    visit(sub)
        for t in tensors:
            if t.data_location == onnx.TensorProto.EXTERNAL:
                locations.update(e.value for e in t.external_data if e.key == "location")

    visit(model.graph)
    return [path, *(path.parent / loc for loc in sorted(locations))]


def files_sha256(files: list[Path]) -> str:
    """sha256 over the files' names and bytes, in order."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\n".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def cache_key(onnx_sha256: str, trt_version: str, gpu: GpuInfo, profile: Shapes,
              precision: tuple[str, ...] = PRECISION) -> str:  # fmt: skip
    """The engine cache key: everything a serialized plan depends on."""
    payload = {"onnx": onnx_sha256, "tensorrt": trt_version, "gpu": gpu.name,
               "capability": list(gpu.capability), "profile": profile,
               "precision": list(precision)}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_plan(
    trt: ModuleType, logger: object, onnx_path: Path, profile: Shapes, *, timing_cache: bytes,
    workspace_gb: float | None = None,
) -> tuple[bytes, bytes]:  # fmt: skip
    """Parse ``onnx_path`` and build an fp16 plan; returns (plan, updated timing cache)."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        listing = "\n  ".join(errors or ["(no error reported)"])
        raise BuildError(f"{onnx_path}: the TensorRT ONNX parser failed with {len(errors)} "
                         f"error(s):\n  {listing}")  # fmt: skip
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = {t.name for t in inputs if any(int(d) < 0 for d in t.shape)}
    unknown = sorted(set(profile) - {t.name for t in inputs})
    unset = sorted(dynamic - set(profile))
    if unknown or unset:
        raise BuildError(f"{onnx_path}: the manifest's inputs do not match the network (not in "
                         f"the network: {unknown}; dynamic, no profile: {unset})")  # fmt: skip
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    if workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache)
    if not config.set_timing_cache(cache, ignore_mismatch=False):  # another TRT version or GPU
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"{onnx_path}: TensorRT could not build an engine (see its log above)")
    return bytes(memoryview(plan)), bytes(memoryview(config.get_timing_cache().serialize()))


def _parser_error(err: object) -> str:
    node = getattr(err, "node_name", lambda: "")() or f"#{err.node()}"
    return f"{err.desc()} (code {err.code()}, node {node})"


def read_manifest(onnx_dir: Path) -> dict:
    """The export manifest, or an :class:`InputError` saying what to run."""
    return read_index(
        onnx_dir / MANIFEST, MANIFEST_VERSION,
        missing=f"export the models first (python -m export.onnx --target tensorrt "
        f"--onnx-dir {onnx_dir})",
        rerun="python -m export.onnx",
    )  # fmt: skip


def build_engines(
    onnx_dir: Path, engine_dir: Path | None = None, *, trt: ModuleType, gpu: GpuInfo,
    networks: list[str] | None = None, workspace_gb: float | None = None, force: bool = False,
    log=print,  # noqa: ANN001
) -> dict:  # fmt: skip
    """Build (or reuse) one engine per network and update ``engine_dir/engines.json``."""
    manifest = read_manifest(onnx_dir)
    entries = manifest.get("networks", {})
    names = list(entries) if networks is None else networks
    unknown = [n for n in names if n not in entries]
    if unknown or not names:
        missing = ", ".join(repr(n) for n in unknown) or "to build"
        raise InputError(f"{onnx_dir / MANIFEST} has no network {missing} "
                         f"(it has: {', '.join(entries) or 'none'})")  # fmt: skip
    foreign = {n: entries[n].get("domains", []) for n in names if entries[n].get("domains")}
    if foreign:
        listing = ", ".join(f"{n} ({', '.join(d)})" for n, d in foreign.items())
        raise InputError(f"{onnx_dir}: {listing} use operators TensorRT's parser does not take; "
                         f"re-export with python -m export.onnx --target tensorrt")  # fmt: skip
    engine_dir = onnx_dir / "trt" if engine_dir is None else engine_dir
    engine_dir.mkdir(parents=True, exist_ok=True)
    index_path, cache_path = engine_dir / ENGINES, engine_dir / TIMING_CACHE
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if index.get("version") != ENGINES_VERSION:
        index = {"version": ENGINES_VERSION, "networks": {}}
    logger = trt.Logger(trt.Logger.WARNING)
    for name in names:
        entry = entries[name]
        onnx_path = onnx_dir / entry["file"]
        onnx_sha = files_sha256(onnx_files(onnx_path))
        profile = profile_shapes(entry)
        key = cache_key(onnx_sha, trt.__version__, gpu, profile)
        plan_path = engine_dir / f"{name}-{key[:16]}.plan"
        if plan_path.is_file() and not force:
            log(f"trt: {name}: reusing {plan_path.name}")
        else:
            log(f"trt: {name}: building fp16 engine for {gpu.label} …")
            t0 = time.perf_counter()
            timing = cache_path.read_bytes() if cache_path.is_file() else b""
            plan, timing = build_plan(trt, logger, onnx_path, profile, timing_cache=timing,
                                      workspace_gb=workspace_gb)  # fmt: skip
            atomic_write(plan_path, plan)
            atomic_write(cache_path, timing)
            log(f"trt: {name}: {plan_path.name} in {time.perf_counter() - t0:.1f} s")
        old = index["networks"].get(name, {}).get("file")
        index["networks"][name] = {
            "file": plan_path.name, "key": key, "trt_version": trt.__version__,
            "gpu": gpu.name, "capability": list(gpu.capability),
            "profile": {n: {"min": s[0], "opt": s[1], "max": s[2]} for n, s in profile.items()},
            "precision": list(PRECISION), "onnx_file": entry["file"], "onnx_sha256": onnx_sha,
            "weights_sha256": entry.get("weights_sha256"),
        }  # fmt: skip
        atomic_write(index_path, (json.dumps(index, indent=1) + "\n").encode())
        if old and old != plan_path.name:
            (engine_dir / old).unlink(missing_ok=True)  # superseded by the new key
    return index


def load_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, or a :class:`MissingDependencyError` saying how to get it."""
    try:
        return importlib.import_module("tensorrt")
    except (ImportError, OSError) as exc:
        raise MissingDependencyError(
            "TensorRT is not installed (pip install 'mmgt[gpu]' on a machine with an NVIDIA GPU)"
            + ("" if isinstance(exc, ModuleNotFoundError) else f": {exc}")
        ) from exc


def detect_gpu(device: str) -> GpuInfo:
    """Name and compute capability of ``device`` via torch, or a clear error without one."""
    import torch

    if not device.startswith("cuda"):
        raise InputError(f"--device {device}: TensorRT builds for a CUDA device (cuda:N)")
    if not torch.cuda.is_available():
        raise MissingDependencyError(f"no CUDA GPU is available for {device} "
                                     "(torch.cuda.is_available() is False); TensorRT needs an "
                                     "NVIDIA GPU")  # fmt: skip
    index = torch.device(device).index or 0
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible")
    torch.cuda.set_device(index)  # TensorRT builds on the current CUDA device
    major, minor = torch.cuda.get_device_capability(index)
    return GpuInfo(torch.cuda.get_device_name(index), (int(major), int(minor)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0].replace("``", ""))
    p.add_argument("--onnx-dir", type=Path, required=True, help="python -m export.onnx output")
    p.add_argument("--engine-dir", type=Path, help="where engines go (default: ONNX_DIR/trt)")
    p.add_argument("--networks", help="comma-separated networks (default: all in the manifest)")
    p.add_argument("--workspace-gb", type=float, help="builder workspace limit in GB")
    p.add_argument("--device", default="cuda:0", help="GPU to build for (default: cuda:0)")
    p.add_argument("--force", action="store_true", help="rebuild even if a cached engine exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    networks = [n for n in args.networks.split(",") if n] if args.networks else None
    try:
        read_manifest(args.onnx_dir)
        trt = load_tensorrt()
        gpu = detect_gpu(args.device)
        index = build_engines(args.onnx_dir, args.engine_dir, trt=trt, gpu=gpu,
                              networks=networks, workspace_gb=args.workspace_gb,
                              force=args.force)  # fmt: skip
    except (InputError, MissingDependencyError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except BuildError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    engine_dir = args.engine_dir or args.onnx_dir / "trt"
    print(f"trt: wrote {engine_dir / ENGINES} ({len(index['networks'])} engine(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
