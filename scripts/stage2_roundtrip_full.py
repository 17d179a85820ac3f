"""Manual check at full size: a random official-preset stage-2 net in the ``net-*.pth`` layout
loads back strictly and bit-identically through the engine's loader.

The full networks hold about 2.3 billion parameters, too many for the test suite, which
compares the official key and shape set on the ``meta`` device instead
(``tests/test_stage2_official.py``). This script builds the real thing: it randomises an
official-preset ``Stage2Net``, writes it as the official training code does (``torch.save`` of
the prefixed state dict, here in float16 to halve memory and disk), reads it back with
``mmgt.weights.stage2.load_stage2_net`` (config inferred from the shapes, strict), and compares
every tensor. Needs about 15 GB of RAM and 5 GB of free disk; a few minutes on two cores.

    .venv/bin/python scripts/stage2_roundtrip_full.py [--dir /tmp/roundtrip]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import tempfile
import time
from pathlib import Path

import torch

from mmgt.models.stage2 import PRESETS, Stage2Net
from mmgt.weights.stage2 import load_stage2_net


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, help="where to write net-1.pth (default: a temp folder)")
    args = p.parse_args()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    net = Stage2Net(PRESETS["official"])
    params = sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        for p_ in net.parameters():
            p_.normal_(0, 0.02)
    state = {k: v.half() for k, v in net.state_dict().items()}
    del net
    gc.collect()
    print(f"built {params / 1e9:.2f} B parameters in {time.perf_counter() - t0:.0f} s")
    digests = {k: digest(v) for k, v in state.items()}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "net-1.pth"
        t0 = time.perf_counter()
        torch.save(state, path)
        size_gb = path.stat().st_size / 1e9
        del state
        gc.collect()
        print(f"wrote {path.name}: {size_gb:.2f} GB in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        loaded = load_stage2_net(path)
        print(f"loaded strictly in {time.perf_counter() - t0:.0f} s")
    assert loaded.config == PRESETS["official"], "inferred config differs from the official"
    back = loaded.state_dict()
    assert set(back) == set(digests), "key sets differ"
    bad = [k for k in back if digest(back[k].half()) != digests[k]]
    assert not bad, f"{len(bad)} tensors differ, e.g. {bad[:3]}"
    print(f"OK: {len(back)} tensors, official config inferred, every tensor bit-identical")


if __name__ == "__main__":
    main()
