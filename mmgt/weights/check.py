"""``mmgt check-weights DIR``: the key and shape diff of an official weights folder.

Each component of the folder (layout in :mod:`mmgt.weights.stage2` and docs/weights.md) is
compared, without building the full-size networks (shapes come from the meta device and from
file headers), against what this engine loads strictly. ``--convert`` writes the stage-2 net
file once as ``stage_2/net.safetensors`` (same tensors, no pickle), which loads faster and
safely afterwards. Exit code 0 when everything present matches, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mmgt.errors import InputError
from mmgt.weights.smga import read_state_dict
from mmgt.weights.stage2 import (
    IMAGE_ENCODER_DIR,
    PREFIXES,
    VAE_DIR,
    WAV2VEC_DIR,
    diff_state,
    expected_shapes,
    infer_config,
    read_stage2_state,
    sd_unet_config,
)

SMGA_FILE = "stage_1/audio2pose_best_model.pt"


@dataclass
class Report:
    component: str
    path: str
    status: str  # "ok", "problems", "absent"
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _file_shapes(path: Path) -> dict[str, torch.Size]:
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return {k: v.shape for k, v in read_state_dict(path).items()}


class _Shapes(dict):
    """Shape-only stand-in for a state dict (``diff_state`` reads ``.shape``)."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        super().__init__({k: torch.empty(s, device="meta") for k, s in shapes.items()})


def check_stage2(root: Path) -> Report:
    try:
        state = read_stage2_state(root)
    except InputError as exc:
        return Report("stage 2 networks", str(root / "stage_2"), "absent", notes=[str(exc)])
    config = infer_config(state.tensors, sd_unet_config(root))
    problems = diff_state(expected_shapes(config), state.tensors)
    notes = [f"{p}: {state.sources.get(p, 'MISSING')}" for p in PREFIXES]
    u = config.unet
    tokens = f"{config.audio_proj.context_tokens}×{u.audio_attention_dim}"
    notes.append(
        f"UNet widths {u.block_out_channels}, CLIP {u.cross_attention_dim}, audio {tokens}"
    )
    extra = sorted(k for k in state.tensors if "audio_modules" in k and "down_blocks" not in k)
    if extra:
        notes.append("mid/up audio modules present: a Hallo-style constructor, not this repo's")
    status = "ok" if not problems else "problems"
    return Report(
        "stage 2 networks", ", ".join(sorted(set(state.sources.values()))), status, problems, notes
    )


def _check_pretrained(name: str, folder: Path, build) -> Report:  # noqa: ANN001
    from mmgt.weights.stage2_models import _weights_file

    if not (folder / "config.json").is_file():
        return Report(name, str(folder), "absent")
    try:
        weights = _weights_file(folder)
    except InputError as exc:
        return Report(name, str(folder), "problems", [str(exc)])
    with torch.device("meta"):
        model = build(folder)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = _Shapes(_file_shapes(weights))
    for benign in ("vision_model.embeddings.position_ids", "embeddings.position_ids"):
        found.pop(benign, None)
    if name == "wav2vec2":  # Wav2Vec2ForCTC layout: prefix and CTC head
        found = _Shapes(
            {
                k.removeprefix("wav2vec2."): v.shape
                for k, v in found.items()
                if not k.startswith("lm_head.")
            }
        )
        for old, new in (
            ("weight_g", "parametrizations.weight.original0"),
            ("weight_v", "parametrizations.weight.original1"),
        ):
            for k in [k for k in found if k.endswith("pos_conv_embed.conv." + old)]:
                if k not in expected:
                    found[k.replace(old, new)] = found.pop(k)
    problems = diff_state(expected, found)
    return Report(name, str(weights), "ok" if not problems else "problems", problems)


def _vae(folder: Path):  # noqa: ANN202
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_config(AutoencoderKL.load_config(folder, local_files_only=True))


def _clip(folder: Path):  # noqa: ANN202
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(folder))


def _wav2vec(folder: Path):  # noqa: ANN202
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    return Wav2Vec2Model(Wav2Vec2Config.from_pretrained(folder))


def check_smga(root: Path) -> Report:
    from mmgt.models.smga import PRESETS as SMGA_PRESETS
    from mmgt.models.smga import SMGA
    from mmgt.weights.smga import check_state_dict

    path = root / SMGA_FILE
    if not path.is_file():
        return Report("stage 1 SMGA", str(path), "absent")
    with torch.device("meta"):
        model = SMGA(SMGA_PRESETS["official"])
    problems = check_state_dict(model, read_state_dict(path, "ema_state_dict"))
    return Report("stage 1 SMGA", str(path), "ok" if not problems else "problems", problems)


def check_folder(root: Path) -> list[Report]:
    """Reports for every component of an official weights folder."""
    if not root.is_dir():
        raise InputError(f"weights folder not found: {root}")
    return [
        check_smga(root),
        check_stage2(root),
        _check_pretrained("VAE (sd-vae-ft-mse)", root / VAE_DIR, _vae),
        _check_pretrained("CLIP image encoder", root / IMAGE_ENCODER_DIR, _clip),
        _check_pretrained("wav2vec2", root / WAV2VEC_DIR, _wav2vec),
    ]


def convert_stage2(root: Path) -> Path:
    """Write the stage-2 tensors (checked first) as ``stage_2/net.safetensors``."""
    report = check_stage2(root)
    if report.status != "ok":
        raise InputError("the stage-2 weights do not match; nothing converted")
    state = read_stage2_state(root).tensors
    out = root / "stage_2" / "net.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), {"format": "mmgt-stage2"})
    os.replace(tmp, out)
    return out


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-weights", help="key and shape diff of an official weights folder")
    p.add_argument("weights_dir", type=Path, help="folder laid out as in docs/weights.md")
    p.add_argument("--convert", action="store_true", help="also write stage_2/net.safetensors")
    p.add_argument("--json", action="store_true", help="print the reports as JSON")


def run_cli(args: argparse.Namespace) -> int:
    reports = check_folder(args.weights_dir)
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
    if args.convert and not bad:
        print(f"converted: {convert_stage2(args.weights_dir)}")
    return 1 if bad else 0
