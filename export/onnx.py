"""python -m export.onnx: export networks to ONNX, check them in ONNX Runtime, write a manifest.

    python -m export.onnx --onnx-dir onnx/                       # the shipped CPU SMGA model
    python -m export.onnx --smga-weights W.safetensors --onnx-dir onnx/
    mmgt render --backend onnxruntime --onnx-dir onnx/ …         # then run on ONNX Runtime

Each network is exported with the dynamo exporter (torch.export; the legacy exporter bakes
attention reshapes at the example shapes) at a chosen opset, with the dynamic axes of its spec
(:mod:`export.specs`). The file is then run in ONNX Runtime at the spec's ``opt`` sizes and at a
second size and compared with torch; the manifest records names, shapes, axes, the weights'
hash and the measured errors. Files over 1 GB of weights use external data.

This slice exports the SMGA denoiser step; the stage-2 networks follow (see README).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from export.specs import NetworkSpec, smga_step
from mmgt.errors import InputError
from mmgt.runtime import MANIFEST, MANIFEST_VERSION, OrtRunner, TorchRunner, state_hash

DEFAULT_OPSET = 20
EXTERNAL_DATA_BYTES = 1 << 30  # weights above this go to a side file (protobuf's 2 GB limit)
RTOL, ATOL = 1e-4, 1e-5  # parity of every exported network with torch (fp32)


def export_network(
    spec: NetworkSpec,
    folder: Path,
    *,
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
) -> dict:
    """Export ``spec`` into ``folder``, check it at two sizes, and return its manifest entry."""
    from torch.export import Dim

    dims = {n: Dim(n, min=a.min, max=a.max) for n, a in spec.axes.items()}
    dynamic_shapes = {
        name: {i: dims[a.name] for i, a in spec.dynamic.get(name, {}).items()} or None
        for name in spec.inputs
    }
    weight_bytes = sum(p.numel() * p.element_size() for p in spec.module.state_dict().values())
    external = weight_bytes > EXTERNAL_DATA_BYTES if external_data is None else external_data
    sample = spec.sample("opt")
    path = folder / f"{spec.name}.onnx"
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            spec.module,
            (),
            str(path),
            kwargs=sample,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            opset_version=opset,
            external_data=external,
        )
    seconds = time.perf_counter() - t0
    checks = check_parity(spec, path)
    return {
        "file": path.name,
        "external_data": external,
        "opset": opset,
        "inputs": {n: _describe(sample[n], spec.dynamic.get(n, {})) for n in spec.inputs},
        "outputs": list(spec.outputs),
        "axes": {n: vars(a) for n, a in spec.axes.items()},
        "weights_sha256": state_hash(spec.module),
        "parameters": sum(p.numel() for p in spec.module.parameters()),
        "export_seconds": round(seconds, 2),
        "checks": checks,
    }


def check_parity(spec: NetworkSpec, path: Path) -> list[dict]:
    """Run torch and ONNX Runtime at the ``opt`` and ``second`` sizes; raise on a mismatch."""
    ort_run = OrtRunner(path, threads=torch.get_num_threads())
    torch_run = TorchRunner(spec.module, spec.inputs, spec.outputs)
    checks = []
    for which in ("opt", "second"):
        inputs = spec.sample(which)
        want, got = torch_run(**inputs), ort_run(**inputs)
        for name in spec.outputs:
            w, g = want[name].float().numpy(), got[name].float().numpy()
            if w.shape != g.shape or not np.allclose(g, w, rtol=RTOL, atol=ATOL):
                err = float(np.abs(g - w).max()) if w.shape == g.shape else float("inf")
                raise RuntimeError(
                    f"{spec.name}: ONNX Runtime differs from torch on {name} at the {which} "
                    f"sizes (shapes {g.shape} vs {w.shape}, max error {err:.3g})"
                )
            sizes = {n: int(inputs[n].shape[i]) for n, dims in spec.dynamic.items() for i in dims}
            checks.append({"sizes": which, "shapes": sizes, "output": name,
                           "max_abs_error": float(np.abs(g - w).max())})  # fmt: skip
    return checks


def _describe(t: torch.Tensor, dims: dict) -> dict:
    shape = [dims[i].name if i in dims else int(s) for i, s in enumerate(t.shape)]
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": shape}


def write_folder(specs: list[NetworkSpec], folder: Path, *, opset: int = DEFAULT_OPSET,
                 external_data: bool | None = None, log=print) -> dict:  # fmt: skip
    """Export ``specs`` into ``folder`` atomically (a failure leaves the folder as it was)."""
    folder.mkdir(parents=True, exist_ok=True)
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
                spec, tmp_dir, opset=opset, external_data=external_data
            )
            worst = max(c["max_abs_error"] for c in entry["checks"])
            log(f"export: {spec.name}: {entry['export_seconds']} s, ORT vs torch ≤ {worst:.1e} "
                f"at two sizes")  # fmt: skip
        for f in tmp_dir.iterdir():  # every network's .onnx (and external data)
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
                   help="SMGA weights: our .safetensors or an official checkpoint (default: the "
                   "shipped CPU model)")  # fmt: skip
    p.add_argument("--smga-heads", type=int, default=8, help="heads of an official checkpoint")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--external-data", action="store_true", help="always write weights to a "
                   "side file (default: only above 1 GB)")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    from mmgt.drivers import DEFAULT_SMGA_WEIGHTS
    from mmgt.weights.smga import load_any_smga

    try:
        pkg = load_any_smga(args.smga_weights or DEFAULT_SMGA_WEIGHTS, heads=args.smga_heads)
        specs = [smga_step(pkg.model)]
        write_folder(specs, args.onnx_dir, opset=args.opset,
                     external_data=True if args.external_data else None)  # fmt: skip
    except InputError as exc:
        print(f"python -m export.onnx: error: {exc}", file=sys.stderr)
        return 2
    print(f"export: wrote {args.onnx_dir / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
