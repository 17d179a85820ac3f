"""python -m export.onnx: export networks to ONNX, check them in ONNX Runtime, write a manifest.

    python -m export.onnx --onnx-dir onnx/                       # the shipped CPU SMGA model
    python -m export.onnx --smga-weights W.safetensors --onnx-dir onnx/
    python -m export.onnx --stage2-preset tiny --onnx-dir onnx/  # + the stage-2 networks
    python -m export.onnx --weights-dir WEIGHTS --onnx-dir onnx/ # official stage 2 (and SMGA)
    mmgt render --backend onnxruntime --onnx-dir onnx/ …         # then run on ONNX Runtime

Networks: ``smga_step`` (the SMGA denoiser), and with a stage-2 source ``pose_guider``,
``audio_proj``, ``vae_encoder``, ``vae_decoder``, ``reference_net`` (the per-avatar bank) and
``unet_step`` (one denoising call over a window). Each is exported with the dynamo exporter
(torch.export; the legacy exporter bakes attention reshapes at the example shapes) at a chosen
opset, with the dynamic axes of its spec (:mod:`export.specs`, :mod:`export.specs_stage2`).
The file is then run in ONNX Runtime at the spec's ``opt`` sizes and at a second size and
compared with torch; the manifest records names, shapes, axes, the weights' hash, the ONNX
domains used and the measured errors. Files over 1 GB of weights use external data.

``--target onnxruntime`` (default) traces a few patterns in ONNX Runtime's preferred form
(:mod:`export.fusions`: long spatial attention as the fused ``com.microsoft.MultiHeadAttention``,
linear layers as Gemm with their bias, GEGLU as two Gemms); ``--target tensorrt`` uses plain ONNX
ops only, which is what ``python -m export.trt`` needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.fusions import OrtRewrites
from export.specs import NetworkSpec, smga_step
from mmgt.errors import InputError
from mmgt.ort_cache import CACHE_DIR
from mmgt.runtime import MANIFEST, MANIFEST_VERSION, OrtRunner, TorchRunner, state_hash
from mmgt.signals import exit_code, interrupted, sigterm_as_interrupt

TARGETS = ("onnxruntime", "tensorrt")
DEFAULT_OPSET = 20
# The torch.export-based exporter writes opset 18 and newer (it silently raises a lower request
# to 18), up to the newest opset of the pinned torch (torch.onnx's ONNX_MAX_OPSET).
MIN_OPSET, MAX_OPSET = 18, 23
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a side file (protobuf's 2 GB limit)
LARGE_BYTES = 1 << 30  # networks with more weights are checked at small sizes (Axis.small)
RTOL, ATOL = 1e-4, 1e-5  # parity of every exported network with torch (fp32)
FP16_RTOL = 2.0**-10  # float16 outputs (the reference bank): one rounding step of float16


def export_network(
    spec: NetworkSpec,
    folder: Path,
    *,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    target: str = "onnxruntime",
    optimize: bool = False,
) -> dict:
    """Export ``spec`` into ``folder``, check it at two sizes, and return its manifest entry.

    ``optimize`` runs the onnxscript optimizer over the graph (constant folding, no-op casts and
    shape arithmetic removed): about 4 minutes for the tiny UNet, whose ORT step then runs ~6%
    faster (docs/performance.md); the small networks take seconds."""
    if target not in TARGETS:
        raise InputError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    from torch.export import Dim

    dims = {n: Dim(n, min=a.min, max=a.max) for n, a in spec.axes.items()}
    dynamic_shapes = tuple(
        {i: dims[a.name] for i, a in spec.dynamic.get(name, {}).items()} or None
        for name in spec.inputs
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in spec.module.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES if external_data is None else external_data
    sample = spec.sample("opt")
    path = folder / f"{spec.name}.onnx"
    args = tuple(sample[n] for n in spec.inputs)
    rewrites = OrtRewrites() if target == "onnxruntime" else contextlib.nullcontext()
    t0 = time.perf_counter()
    with torch.no_grad():
        with rewrites:
            program = torch.export.export(
                _Positional(spec.module, spec.inputs), args,
                dynamic_shapes={"args": dynamic_shapes}, strict=False,
            )  # fmt: skip
        torch.onnx.export(
            program,
            args,
            str(path),
            dynamo=True,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            opset_version=opset,
            external_data=external,
            optimize=optimize,
        )
    seconds = time.perf_counter() - t0
    opsets = _opsets(path)
    if (written := opsets.pop("", None)) != opset:  # the exporter did not honour the request
        raise InputError(f"{spec.name}: asked for opset {opset}, the exporter wrote {written}")
    # Large networks are checked at small sizes: at 512² the UNet step's 12-frame CFG pair
    # took over 21 GB of RAM in the check (attention scores), beyond many machines.
    checks = check_parity(spec, path, first="small" if weight_bytes > LARGE_BYTES else "opt")
    return {
        "file": path.name,
        "external_data": external,
        "opset": opset,
        "target": target,
        "domains": sorted(opsets),  # beyond standard ONNX, e.g. com.microsoft
        "inputs": {n: _describe(sample[n], spec.dynamic.get(n, {})) for n in spec.inputs},
        "outputs": list(spec.outputs),
        "axes": {n: vars(a) for n, a in spec.axes.items()},
        "weights_sha256": state_hash(spec.module),
        "parameters": sum(p.numel() for p in spec.module.parameters()),
        "export_seconds": round(seconds, 2),
        "checks": checks,
    }


class _Positional(torch.nn.Module):
    """``module(**named)`` called with positional inputs in ``names`` order (the exporter's
    flat argument list; networks whose inputs vary in number take ``**tensors``)."""

    def __init__(self, module: torch.nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.module, self.names = module, names

    def forward(self, *args: torch.Tensor):  # noqa: ANN201 - the module's outputs
        return self.module(**dict(zip(self.names, args, strict=True)))


def check_parity(spec: NetworkSpec, path: Path, first: str = "opt") -> list[dict]:
    """Run torch and ONNX Runtime at the ``first`` (``opt`` or ``small``) and ``second``
    sizes of the spec's axes; raise on a mismatch.

    The test is norm-wise: the largest difference must be within ``rtol`` of the output's
    largest magnitude (plus ``ATOL``). fp32 rounding in a deep network grows with the size of
    the activations summed, not with each output element, so an element-wise test fails at
    full width on outputs near zero: the official-width UNet step differs by 1.9e-5 where its
    outputs are of order 1 (``scripts/export_full_size.py``). Whether it also met the stricter
    element-wise test (rtol, ``ATOL``; the tiny presets do, tested) is recorded."""
    ort_run = OrtRunner(path, threads=torch.get_num_threads())
    torch_run = TorchRunner(spec.module, spec.inputs, spec.outputs)
    checks = []
    for which in (first, "second"):
        inputs = spec.sample(which)
        want, got = torch_run(**inputs), ort_run(**inputs)
        for name in spec.outputs:
            rtol = FP16_RTOL if want[name].dtype == torch.float16 else RTOL
            w, g = want[name].float().numpy(), got[name].float().numpy()
            if w.shape != g.shape:
                raise RuntimeError(f"{spec.name}: ONNX Runtime gives {name} of shape {g.shape}, "
                                   f"torch {w.shape}, at the {which} sizes")  # fmt: skip
            err, scale = float(np.abs(g - w).max()), float(np.abs(w).max())
            if not err <= rtol * scale + ATOL:  # (NaN fails too)
                raise RuntimeError(
                    f"{spec.name}: ONNX Runtime differs from torch on {name} at the {which} "
                    f"sizes by up to {err:.3g} (outputs up to {scale:.3g}; allowed "
                    f"{rtol:g} × that + {ATOL:g})"
                )
            sizes = {a.name: int(inputs[n].shape[i])  # each dynamic axis: its size here
                     for n, dims in spec.dynamic.items() for i, a in dims.items()}  # fmt: skip
            elementwise = bool(np.allclose(g, w, rtol=rtol, atol=ATOL))
            checks.append({"sizes": which, "shapes": sizes, "output": name,
                           "max_abs_error": err, "max_abs_output": scale,
                           "elementwise": elementwise})  # fmt: skip
    return checks


def _describe(t: torch.Tensor, dims: dict) -> dict:
    shape = [dims[i].name if i in dims else int(s) for i, s in enumerate(t.shape)]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": shape}


def check_destination(folder: Path, opset: int) -> None:
    """Refuse what would fail only after minutes of exporting, or silently differ from the
    request: an output path that is a file, an opset the exporter does not write."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--onnx-dir {folder} is a file; give a folder")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset must be in {MIN_OPSET}..{MAX_OPSET} (what the torch exporter "
                         f"writes), got {opset}")  # fmt: skip


def _opsets(path: Path) -> dict[str, int]:
    """Operator domain → opset version a written file declares (standard ONNX as ``""``)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}


def write_folder(
    specs: list[NetworkSpec], folder: Path, *, opset: int = DEFAULT_OPSET,
    external_data: bool | None = None, target: str = "onnxruntime", optimize: bool = False,
    log=print,  # noqa: ANN001
) -> dict:  # fmt: skip
    """Export ``specs`` into ``folder`` atomically (a failure leaves the folder as it was, and
    removes it if this call created it); entries of other networks already in the folder's
    manifest are kept."""
    check_destination(folder, opset)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return _write_folder(specs, folder, opset, external_data, target, optimize, log)
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def _write_folder(
    specs: list[NetworkSpec], folder: Path, opset: int, external_data: bool | None,
    target: str, optimize: bool, log,  # noqa: ANN001
) -> dict:  # fmt: skip
    old = folder / MANIFEST
    manifest = json.loads(old.read_text()) if old.is_file() else {}
    if manifest.get("version") != MANIFEST_VERSION:
        manifest = {"version": MANIFEST_VERSION, "networks": {}}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        tmp_dir = Path(tmp)
        entries = {}
        for spec in specs:
            log(f"export: {spec.name} …")
            entries[spec.name] = entry = export_network(
                spec, tmp_dir, opset=opset, external_data=external_data, target=target,
                optimize=optimize,
            )  # fmt: skip
            worst = max(c["max_abs_error"] for c in entry["checks"])
            log(f"export: {spec.name}: {entry['export_seconds']} s, ORT vs torch ≤ {worst:.1e} "
                f"at two sizes")  # fmt: skip
        for f in tmp_dir.iterdir():  # every network's .onnx (and external data)
            if f.name != CACHE_DIR:  # the checks' optimised graphs: keyed to the temporary path
                f.replace(folder / f.name)
        manifest["networks"].update(entries)
    manifest["torch"] = torch.__version__
    manifest["onnxruntime"] = __import__("onnxruntime").__version__
    tmp_manifest = folder / (MANIFEST + ".tmp")
    tmp_manifest.write_text(json.dumps(manifest, indent=1) + "\n")
    tmp_manifest.replace(folder / MANIFEST)
    return manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m export.onnx", description=__doc__.splitlines()[0])
    p.add_argument("--onnx-dir", type=Path, required=True, help="output folder (--onnx-dir of "
                   "render and the server)")  # fmt: skip
    p.add_argument("--smga-weights", type=Path,
                   help="SMGA weights: our .safetensors or an official checkpoint (default: "
                   "WEIGHTS_DIR/stage_1/audio2pose_best_model.pt if present, else the shipped "
                   "CPU model)")  # fmt: skip
    p.add_argument("--smga-heads", type=int, default=8, help="heads of an official checkpoint")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--weights-dir", type=Path, help="official weights folder "
                        "(docs/weights.md): also export the stage-2 networks")  # fmt: skip
    source.add_argument("--stage2-preset", choices=("tiny",), help="also export the stage-2 "
                        "networks of the random tiny models")  # fmt: skip
    p.add_argument("--networks", help="comma-separated subset to export (default: smga_step, "
                   "plus every stage-2 network when a stage-2 source is given)")  # fmt: skip
    p.add_argument("--target", choices=TARGETS, default="onnxruntime",
                   help="onnxruntime: ONNX Runtime's preferred forms (fused attention, Gemm); "
                   "tensorrt: plain ONNX ops for python -m export.trt")  # fmt: skip
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default %(default)s)")  # fmt: skip
    p.add_argument("--optimize", action="store_true", help="run the onnxscript graph optimizer "
                   "(minutes for a UNet; ~6%% faster in ONNX Runtime)")  # fmt: skip
    p.add_argument("--external-data", action="store_true", help="always write weights to a "
                   "side file (default: only above 1 GB)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def build_specs(args: argparse.Namespace) -> list[NetworkSpec]:
    """The specs the command line asks for (models loaded on the CPU in fp32)."""
    from mmgt.drivers import DEFAULT_SMGA_WEIGHTS
    from mmgt.models.stage2_steps import STAGE2_NETWORKS
    from mmgt.weights.smga import load_any_smga

    stage2 = args.weights_dir is not None or args.stage2_preset is not None
    known = ("smga_step", *STAGE2_NETWORKS)
    wanted = ["smga_step", *(STAGE2_NETWORKS if stage2 else ())]
    if args.networks:
        wanted = [n for n in args.networks.split(",") if n]
        unknown = [n for n in wanted if n not in known]
        if unknown or not wanted:
            raise InputError(f"--networks: unknown {', '.join(unknown) or 'empty list'} "
                             f"(known: {', '.join(known)})")  # fmt: skip
        if not stage2 and any(n in STAGE2_NETWORKS for n in wanted):
            raise InputError("stage-2 networks need --weights-dir or --stage2-preset tiny")
    specs = []
    if "smga_step" in wanted:
        official = None if args.weights_dir is None else (
            args.weights_dir / "stage_1" / "audio2pose_best_model.pt")  # fmt: skip
        smga = args.smga_weights or (official if official and official.is_file() else None)
        pkg = load_any_smga(smga or DEFAULT_SMGA_WEIGHTS, heads=args.smga_heads)
        specs.append(smga_step(pkg.model))
    if stage2 and any(n in STAGE2_NETWORKS for n in wanted):
        from export.specs_stage2 import stage2_specs
        from mmgt.weights.stage2_models import Stage2Models

        models = (Stage2Models.from_folder(args.weights_dir) if args.weights_dir is not None
                  else Stage2Models.random(args.stage2_preset))  # fmt: skip
        specs += [s for s in stage2_specs(models) if s.name in wanted]
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    try:
        with sigterm_as_interrupt():  # a stopped export leaves no temporary folder behind
            check_destination(args.onnx_dir, args.opset)  # before any model loads
            specs = build_specs(args)
            write_folder(specs, args.onnx_dir, opset=args.opset, target=args.target,
                         optimize=args.optimize,
                         external_data=True if args.external_data else None)  # fmt: skip
    except InputError as exc:
        print(f"python -m export.onnx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # write_folder has removed its temporary folder
        print(f"python -m export.onnx: {interrupted(exc)}", file=sys.stderr)
        return exit_code(exc)
    print(f"export: wrote {args.onnx_dir / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
