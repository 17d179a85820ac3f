"""``mmgt check-weights``: its arguments and its report (the checks are in
:mod:`mmgt.weights.check`, imported only when the command runs: they need torch and diffusers,
seconds of imports that ``mmgt --help`` should not wait for)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from mmgt.errors import InputError


def add_cli(sub: argparse._SubParsersAction) -> None:
    """Declare ``check-weights`` (light: no torch)."""
    p = sub.add_parser("check-weights", help="key and shape diff of an official weights folder")
    p.add_argument("weights_dir", type=Path, help="folder laid out as in docs/weights.md")
    p.add_argument(
        "--convert",
        action="store_true",
        help="also write stage_2/net.safetensors and stage_1/audio2pose_best_model.safetensors",
    )
    p.add_argument("--json", action="store_true", help="print the reports as JSON")


def run_cli(args: argparse.Namespace) -> int:
    """Check the folder, print the reports (and convert with ``--convert``); 1 on problems."""
    from mmgt.weights.check import SMGA_FILE, check_folder, convert_stage2  # noqa: PLC0415
    from mmgt.weights.smga import convert_official_smga  # noqa: PLC0415
    from mmgt.weights.stage2 import read_stage2_state  # noqa: PLC0415

    if not args.weights_dir.is_dir():
        raise InputError(f"weights folder not found: {args.weights_dir}")
    stage2 = None
    if args.convert:  # read the (large) net file once, for the check and the conversion
        try:
            stage2 = read_stage2_state(args.weights_dir)
        except InputError:
            stage2 = None
    reports = check_folder(args.weights_dir, stage2)
    if args.json:
        print(json.dumps([asdict(r) for r in reports], indent=2))
    else:
        for r in reports:
            print(f"[{r.status:>8}] {r.component}: {r.path}")
            for note in r.notes:
                print(f"           {note}")
            for problem in r.problems[:200]:
                print(f"           {problem}")
            if len(r.problems) > 200:
                print(f"           … and {len(r.problems) - 200} more")
    bad = any(r.status == "problems" for r in reports)
    if args.convert and not bad and stage2 is not None:
        print(f"converted: {convert_stage2(args.weights_dir, stage2)}")
    if args.convert and not bad and reports[0].status == "ok":
        src = args.weights_dir / SMGA_FILE
        print(f"converted: {convert_official_smga(src, src.with_suffix('.safetensors'))}")
    return 1 if bad else 0
