"""Loading the official MMGT stage-2 weights from a local folder (never downloading anything).

Folder layout (``--weights-dir``; the names of the official ``pretrained_weights/``)::

    stage_2/net-32500.pth                     the four networks (official process-2 output);
                                              also found as stage_2/process_2/net-*.pth or
                                              add_motion_mask/stage2/modules/net-*.pth
    stage_2/net.safetensors                   the same after ``check-weights --convert``
    stage_2/process_1/{denoising_unet,reference_unet,pose_guider}-29580.pth   (optional)
    stable-diffusion-v1-5/unet/config.json    the UNet layout (weights not needed)
    sd-vae-ft-mse/                            diffusers AutoencoderKL folder
    sd-image-variations-diffusers/image_encoder/   CLIPVisionModelWithProjection folder
    wav2vec/wav2vec2-base-960h/               transformers Wav2Vec2 folder

``net-*.pth`` defines every tensor of the four networks, so it overrides the process-1 files
(as in ``audio2vid``); a process-1 file only fills a prefix the net file lacks. Everything is
read with safetensors or ``torch.load(weights_only=True)`` and loaded strictly: each missing or
unexpected key is named, and shape mismatches say which configuration value they imply.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from mmgt.errors import WeightsError
from mmgt.models.audio_proj import AudioProjConfig
from mmgt.models.pose_guider import PoseGuiderConfig
from mmgt.models.stage2 import PREFIXES, Stage2Config, Stage2Net
from mmgt.weights.smga import read_state_dict

NET_GLOBS = (
    "stage_2/net.safetensors",
    "stage_2/net-*.pth",
    "stage_2/process_2/net-*.pth",
    "add_motion_mask/stage2/modules/net-*.pth",
    "net-*.pth",
)
PROCESS1 = {p: f"stage_2/process_1/{p}-*.pth" for p in PREFIXES[:3]}
SD_UNET_CONFIG = "stable-diffusion-v1-5/unet/config.json"
VAE_DIR = "sd-vae-ft-mse"
IMAGE_ENCODER_DIR = "sd-image-variations-diffusers/image_encoder"
WAV2VEC_DIR = "wav2vec/wav2vec2-base-960h"


def _step(path: Path) -> int:
    m = re.search(r"-(\d+)\.", path.name)
    return int(m.group(1)) if m else -1


def find_net_file(weights_dir: Path) -> Path | None:
    """The stage-2 net file in ``weights_dir`` (highest training step when several exist)."""
    for pattern in NET_GLOBS:
        found = sorted(weights_dir.glob(pattern), key=_step)
        if found:
            return found[-1]
    return None


@dataclass
class Stage2State:
    """Tensors with the four official prefixes, and where each prefix came from."""

    tensors: dict[str, torch.Tensor]
    sources: dict[str, str] = field(default_factory=dict)


def read_stage2_state(source: str | os.PathLike[str]) -> Stage2State:
    """Read a net file, or a weights folder (net file plus process-1 files for missing parts)."""
    source = Path(source)
    if source.is_file():
        state = read_state_dict(source)
        return Stage2State(state, {p: str(source) for p in PREFIXES if _has(state, p)})
    if not source.is_dir():
        raise WeightsError(f"stage-2 weights not found: {source}")
    net = find_net_file(source)
    tensors: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    if net is not None:
        tensors = read_state_dict(net)
        sources = {p: str(net) for p in PREFIXES if _has(tensors, p)}
    for prefix, pattern in PROCESS1.items():
        if prefix in sources:
            continue
        found = sorted(source.glob(pattern), key=_step)
        if found:
            part = read_state_dict(found[-1])
            tensors.update({f"{prefix}.{k}": v for k, v in part.items()})
            sources[prefix] = str(found[-1])
    if not tensors:
        raise WeightsError(
            f"no stage-2 weights in {source}: expected one of {', '.join(NET_GLOBS)} "
            f"(see docs/weights.md)"
        )
    return Stage2State(tensors, sources)


def _has(state: dict[str, torch.Tensor], prefix: str) -> bool:
    return any(k.startswith(prefix + ".") for k in state)


def infer_config(
    state: dict[str, torch.Tensor], sd_unet_config: dict | None = None
) -> Stage2Config:
    """The :class:`Stage2Config` whose shapes match ``state`` (official preset where unknown)."""
    base = Stage2Config()
    unet = base.unet
    if sd_unet_config:
        keep = {
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
            "in_channels",
            "out_channels",
            "norm_num_groups",
            "norm_eps",
            "sample_size",
        }
        values = {k: v for k, v in sd_unet_config.items() if k in keep}
        if "block_out_channels" in values:
            values["block_out_channels"] = tuple(values["block_out_channels"])
        heads = sd_unet_config.get("attention_head_dim", unet.heads)
        unet = replace(unet, **values, heads=heads if isinstance(heads, int) else heads[0])
    d = "denoising_unet."
    widths = []
    for i in range(8):
        w = state.get(f"{d}down_blocks.{i}.resnets.0.conv1.weight")
        if w is None:
            break
        widths.append(int(w.shape[0]))
    if widths:
        unet = replace(unet, block_out_channels=tuple(widths))
    ctx = state.get(f"{d}down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight")
    if ctx is not None:
        unet = replace(unet, cross_attention_dim=int(ctx.shape[1]))
    aud = state.get(f"{d}down_blocks.0.audio_modules.0.transformer_blocks.0.attn2_0.to_k.weight")
    if aud is not None:
        unet = replace(unet, audio_attention_dim=int(aud.shape[1]))
    proj = base.audio_proj
    p1, p3 = state.get("audioproj.proj1.weight"), state.get("audioproj.proj3.weight")
    if p1 is not None and p3 is not None:
        tokens = int(p3.shape[0]) // unet.audio_attention_dim
        channels = int(p1.shape[1]) // (proj.window * proj.layers)
        proj = AudioProjConfig(
            channels=channels,
            intermediate_dim=int(p1.shape[0]),
            output_dim=unet.audio_attention_dim,
            context_tokens=tokens,
        )
    guider = PoseGuiderConfig(out_channels=unet.block_out_channels[0])
    blocks = [state.get(f"pose_guider.blocks.{i}.weight") for i in range(1, 8, 2)]
    if all(b is not None for b in blocks[:3]):
        first = state["pose_guider.conv_in.weight"].shape[0]
        outs = (int(first),) + tuple(int(b.shape[0]) for b in blocks if b is not None)
        guider = replace(guider, block_out_channels=outs)
    return Stage2Config(unet, guider, proj)


def _hint(name: str, expected: torch.Size, found: torch.Size) -> str:
    hint = ""
    if "audio_modules" in name and name.endswith("proj_in.weight"):
        hint = " (audio inner width = 8 × block input channels // 8, an official quirk)"
    elif name.endswith("attn2_0.to_k.weight"):
        hint = f" (audio_attention_dim={found[1]})"
    elif name.endswith("attn2.to_k.weight"):
        hint = f" (cross_attention_dim={found[1]}: the CLIP image embedding width)"
    elif name == "audioproj.proj1.weight":
        hint = f" (5 frames × 12 layers × wav2vec2 width = {found[1]})"
    elif name.endswith("resnets.0.conv1.weight"):
        hint = f" (block width {found[0]}; check block_out_channels)"
    return f"{name}: checkpoint {tuple(found)} vs model {tuple(expected)}{hint}"


def diff_state(expected: dict[str, torch.Size], state: dict[str, torch.Tensor]) -> list[str]:
    """Missing, unexpected and wrongly shaped keys of ``state`` against ``expected`` shapes."""
    problems = [f"missing: {k} {tuple(s)}" for k, s in expected.items() if k not in state]
    problems += [f"unexpected: {k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    problems += [
        "shape " + _hint(k, expected[k], v.shape)
        for k, v in state.items()
        if k in expected and tuple(expected[k]) != tuple(v.shape)
    ]
    return problems


def expected_shapes(config: Stage2Config) -> dict[str, torch.Size]:
    """Key → shape of :class:`Stage2Net` at ``config``, built on the meta device (no memory)."""
    with torch.device("meta"):
        net = Stage2Net(config)
    return {k: v.shape for k, v in net.state_dict().items()}


def sd_unet_config(weights_dir: Path) -> dict | None:
    path = weights_dir / SD_UNET_CONFIG
    return json.loads(path.read_text()) if path.is_file() else None


def load_stage2_net(
    source: str | os.PathLike[str], config: Stage2Config | None = None
) -> Stage2Net:
    """Build :class:`Stage2Net` and load ``source`` (net file or weights folder) strictly."""
    state = read_stage2_state(source)
    folder = Path(source) if Path(source).is_dir() else None
    if config is None:
        config = infer_config(state.tensors, sd_unet_config(folder) if folder else None)
    problems = diff_state(expected_shapes(config), state.tensors)
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  … and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise WeightsError(f"{source} does not match the stage-2 networks:\n  {shown}{more}")
    net = Stage2Net(config)
    net.load_state_dict({k: v.float() for k, v in state.tensors.items()}, strict=True)
    return net.eval()


def write_stage2_safetensors(
    tensors: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    config: Stage2Config | None = None,
) -> None:
    """Write stage-2 tensors as one safetensors file, atomically (no partial file is left)."""
    meta = {"format": "mmgt-stage2"}
    if config is not None:
        meta["config"] = json.dumps(asdict(config))
    tmp = Path(path).with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
    os.replace(tmp, path)


def save_stage2_safetensors(net: Stage2Net, path: str | os.PathLike[str]) -> None:
    """Write the four networks as one safetensors file (the converted ``net-*.pth``)."""
    write_stage2_safetensors(net.state_dict(), path, net.config)
