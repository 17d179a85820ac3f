"""The checks behind ``mmgt check-weights DIR`` (:mod:`mmgt.weights.cli`): the key and shape
diff of an official weights folder.

Each component of the folder (layout in :mod:`mmgt.weights.stage2` and docs/weights.md) is
compared, without building the full-size networks (shapes come from the meta device and from
file headers), against what this engine loads strictly. ``--convert`` writes the stage-2 net
file once as ``stage_2/net.safetensors`` and the SMGA checkpoint as
``stage_1/audio2pose_best_model.safetensors`` (same tensors, no pickle), which load faster and
safely afterwards (and are preferred when present). Exit code 0 when everything present
matches, 1 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgt.errors import InputError
from mmgt.weights.files import open_safetensors
from mmgt.weights.smga import read_state_dict
from mmgt.weights.stage2 import (
    IMAGE_ENCODER_DIR,
    PREFIXES,
    VAE_DIR,
    WAV2VEC_DIR,
    Stage2State,
    diff_state,
    expected_shapes,
    infer_config,
    read_stage2_state,
    sd_unet_config,
    write_stage2_safetensors,
)
from mmgt.weights.wav2vec import strip_head
from mmgt.weights.wavlm import _POS, _WN_NEW, _WN_OLD, _weight_norm_names

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
        with open_safetensors(path) as f:
            return {k: torch.Size(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return {k: v.shape for k, v in read_state_dict(path).items()}


class _Shapes(dict):
    """Shape-only stand-in for a state dict (``diff_state`` reads ``.shape``)."""

    def __init__(self, shapes: dict[str, torch.Size]) -> None:
        super().__init__({k: torch.empty(s, device="meta") for k, s in shapes.items()})


def check_stage2(root: Path, state: Stage2State | None = None) -> Report:
    """Report on the stage-2 networks (``state``: already read from ``root``, if at hand)."""
    try:
        state = state or read_stage2_state(root)
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
    from mmgt.weights.stage2_models import weights_file

    if not (folder / "config.json").is_file():
        return Report(name, str(folder), "absent")
    try:
        weights = weights_file(folder)
    except InputError as exc:
        return Report(name, str(folder), "problems", [str(exc)])
    with torch.device("meta"):
        model = build(folder)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    found = _Shapes(_file_shapes(weights))
    for benign in ("vision_model.embeddings.position_ids", "embeddings.position_ids"):
        found.pop(benign, None)
    if name == "wav2vec2":  # Wav2Vec2ForCTC layout (prefix, CTC head), either weight-norm name
        found = _Shapes({k: v.shape for k, v in strip_head(found).items()})
        own = _weight_norm_names(model)
        for spelling in (_WN_OLD, _WN_NEW):
            for src, dst in zip(spelling, own, strict=True):
                if src != dst and _POS + src in found:
                    found[_POS + dst] = found.pop(_POS + src)
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


def check_dwpose(root: Path) -> Report:
    from mmgt.keypoints import dwpose

    folder = root / "DWPose"
    if not folder.is_dir():
        return Report("DWPose (reference poses)", str(folder), "absent")
    problems = dwpose.signature_problems(folder)
    notes = ["used for reference poses with --pose-model auto (official models) or dwpose"]
    return Report("DWPose (reference poses)", str(folder), "problems" if problems else "ok",
                  problems, notes)  # fmt: skip


def check_folder(root: Path, stage2: Stage2State | None = None) -> list[Report]:
    """Reports for every component of an official weights folder."""
    if not root.is_dir():
        raise InputError(f"weights folder not found: {root}")
    return [
        check_smga(root),
        check_stage2(root, stage2),
        _check_pretrained("VAE (sd-vae-ft-mse)", root / VAE_DIR, _vae),
        _check_pretrained("CLIP image encoder", root / IMAGE_ENCODER_DIR, _clip),
        _check_pretrained("wav2vec2", root / WAV2VEC_DIR, _wav2vec),
        check_dwpose(root),
    ]


def convert_stage2(root: Path, state: Stage2State) -> Path:
    """Write checked stage-2 tensors (read from ``root``) as ``stage_2/net.safetensors``."""
    out = root / "stage_2" / "net.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_stage2_safetensors(state.tensors, out)
    return out
