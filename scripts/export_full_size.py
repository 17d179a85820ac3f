"""Manual check at full width: the official-preset stage-2 networks export to ONNX and match
torch in ONNX Runtime.

The test suite exports the tiny preset (``tests/test_export_stage2.py``). This script exports
the networks at the official widths (SD1.5 UNets with motion and MM-HAA modules, the pose
guider, the audio projection, an sd-vae-ft-mse-shaped VAE: 2.4 B random parameters) with
``python -m export.onnx``'s own :func:`export.onnx.export_network`, which checks each file in
ONNX Runtime against torch at two sizes (the largest difference within 1e-4 of the largest
output) and writes files over 1 GB of weights with external data. Frames are ``--resolution``
pixels (default 256: a 32² latent): the weights do not depend on the frame size, and at 512²
the CPU check of ``--target tensorrt``'s plain attention holds about 1 GB of scores per image.
``--resolution 512 --target onnxruntime --networks unet_step`` peaked at 15.7 GB here. CLIP
and wav2vec2 are not exported (they stay in torch). Needs about 20 GB of RAM and 15 GB of free
disk; docs/tensorrt.md has the results.

    .venv/bin/python scripts/export_full_size.py [--target tensorrt] [--dir /tmp/full-onnx]
        [--networks pose_guider,unet_step]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from export.onnx import TARGETS, export_network
from export.specs_stage2 import stage2_specs
from mmgt.models.stage2 import PRESETS, Stage2Net
from mmgt.weights.stage2_models import Stage2Models, randomize


def official_models(resolution: int, seed: int = 0) -> Stage2Models:
    """Random official-width networks and an SD-sized VAE, at ``resolution`` pixels."""
    from diffusers import AutoencoderKL

    base = PRESETS["official"]
    config = dataclasses.replace(
        base, unet=dataclasses.replace(base.unet, sample_size=resolution // 8)
    )
    torch.manual_seed(seed)
    net = Stage2Net(config)
    randomize(net, seed, std=0.02)  # zero-initialised adapters live, as the fixtures do
    vae = AutoencoderKL(  # sd-vae-ft-mse's shape (diffusers' SD VAE config)
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=resolution,
    )
    models = Stage2Models(config, net, vae, nn.Identity(), nn.Identity(), resolution)
    for module in (net, vae):
        module.eval()
    return models


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", choices=TARGETS, default="tensorrt")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--networks", help="comma-separated subset (default: all six)")
    p.add_argument("--dir", type=Path, help="where to write the files (default: a temp folder)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    models = official_models(args.resolution)
    params = sum(q.numel() for m in (models.net, models.vae) for q in m.parameters())
    print(f"built {params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s")
    specs = stage2_specs(models)
    wanted = args.networks.split(",") if args.networks else [s.name for s in specs]
    specs = [s for s in specs if s.name in wanted]
    # Smallest first; the UNet step last, after the ReferenceNet is let go (it is not needed
    # for the step: the bank's shapes were taken when the specs were made).
    if "reference_net" not in wanted:
        del models.net.reference_unet
        gc.collect()
    results = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        while specs:
            spec = specs.pop(0)
            t0 = time.perf_counter()
            entry = export_network(spec, folder, target=args.target)
            files = [f for f in folder.iterdir() if f.name.startswith(spec.name)]
            size = sum(f.stat().st_size for f in files) / 1e9
            worst = max(c["max_abs_error"] for c in entry["checks"])
            results[spec.name] = {
                "parameters": entry["parameters"],
                "external_data": entry["external_data"],
                "files_gb": round(size, 2),
                "export_s": entry["export_seconds"],
                "export_and_checks_s": round(time.perf_counter() - t0, 1),
                "max_abs_error": worst,
                "checks": entry["checks"],
                "peak_rss_gb": round(peak_rss_gb(), 1),
            }
            print(f"{spec.name}: {entry['parameters'] / 1e6:.0f} M parameters, {size:.2f} GB "
                  f"({len(files)} files), export {entry['export_seconds']:.0f} s, "
                  f"ORT vs torch ≤ {worst:.2e} at two sizes, peak RSS {peak_rss_gb():.1f} GB",
                  flush=True)  # fmt: skip
            for f in files:
                f.unlink()
            if spec.name == "reference_net":
                del models.net.reference_unet
            del spec
            gc.collect()
    print(json.dumps({"target": args.target, "resolution": args.resolution,
                      "torch": torch.__version__, "networks": results}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
