"""Loading SMGA weights: official checkpoints (``.pt``) and our safetensors.

Official stage-1 checkpoints (``audio2pose_best_model.pt``) are pickled dicts holding
``ema_state_dict`` (what inference uses), ``model_state_dict``, ``optimizer_state_dict`` and
``normalizer`` or ``epoch``; the state dicts carry the unprefixed ``GestureDecoder`` names,
including the shared ``rotary.freqs`` buffer under every module that holds it. They are read
with ``torch.load(weights_only=True)`` only: a pickle that carries code is refused.

Loading is strict: every missing or unexpected key is reported by name, and shape mismatches
say which configuration value they imply.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from mmgt.errors import InputError, WeightsError
from mmgt.models.smga import SMGA, SMGAConfig
from mmgt.weights.files import load_safetensors_file, load_torch_file, open_safetensors

CHECKPOINT_KEYS = ("ema_state_dict", "model_state_dict", "state_dict")


def read_state_dict(
    path: str | os.PathLike[str], key: str | None = None
) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint: ``.safetensors``, or a ``.pt``/``.pth`` read with weights_only."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(ckpt).__name__})")
    keys = (key,) if key else CHECKPOINT_KEYS
    for k in keys:
        if isinstance(ckpt.get(k), dict):
            ckpt = ckpt[k]
            break
    else:
        if key:
            raise WeightsError(f"{path} has no {key!r}; top-level keys: {sorted(ckpt)}")
    tensors = {k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path} holds no tensors at the top level or under {keys}")
    if all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def _shape_hint(name: str, expected: torch.Size, found: torch.Size) -> str:
    hint = ""
    if name == "input_projection.weight":
        hint = f" (latent_dim={found[0]}, keypoint_dim={found[1] // 2})"
    elif name == "cond_projection.weight":
        hint = f" (audio_dim={found[1]}: 1059 = WavLM-Large 1024 + 35 EDGE features)"
    elif name == "null_cond_embed":
        hint = f" (frames={found[1]})"
    elif name.endswith("linear1.weight"):
        hint = f" (ff_dim={found[0]})"
    return f"{name}: checkpoint {tuple(found)} vs model {tuple(expected)}{hint}"


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Problems loading ``state`` strictly into ``model``: missing, unexpected, bad shapes."""
    own = model.state_dict()
    problems = [f"missing: {k}" for k in own if k not in state]
    problems += [f"unexpected: {k}" for k in state if k not in own]
    problems += [
        "shape " + _shape_hint(k, own[k].shape, v.shape)
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    return problems


def load_smga(path: str | os.PathLike[str], config: SMGAConfig, *, key: str | None = None) -> SMGA:
    """Build SMGA with ``config`` and load ``path`` into it strictly (eval mode, CPU, fp32)."""
    state = read_state_dict(path, key)
    model = SMGA(config)
    problems = check_state_dict(model, state)
    if problems:
        shown = "\n  ".join(problems[:40])
        more = f"\n  … and {len(problems) - 40} more" if len(problems) > 40 else ""
        raise WeightsError(f"{path} does not match the SMGA configuration:\n  {shown}{more}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


DRIVER_PREFIX = "driver."  # extra tensors of our own packages (feature normalisation)


# What marks an official checkpoint, in its loaded package and in its converted safetensors.
OFFICIAL_METADATA = {"feature_kind": "official-wavlm-edge", "source": "official"}


def save_smga_safetensors(
    model: SMGA,
    path: str | os.PathLike[str],
    *,
    audio_mean: np.ndarray | None = None,
    audio_std: np.ndarray | None = None,
    pose_std: np.ndarray | None = None,
    extra: dict[str, str] | None = None,
) -> None:
    """Write the state dict (official key names, every shared buffer copied), the config and,
    for our trained drivers, the audio-feature normalisation (``driver.audio_mean/std``)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if audio_mean is not None:
        state[DRIVER_PREFIX + "audio_mean"] = torch.as_tensor(audio_mean, dtype=torch.float32)
        state[DRIVER_PREFIX + "audio_std"] = torch.as_tensor(audio_std, dtype=torch.float32)
    if pose_std is not None:  # trained in the residual pose space (mmgt.drivers.pose_space)
        state[DRIVER_PREFIX + "pose_std"] = torch.as_tensor(pose_std, dtype=torch.float32)
    meta = {"config": json.dumps(model.config.__dict__), "format": "mmgt-smga-v1", **(extra or {})}
    save_file(state, str(path), metadata=meta)


@dataclass
class SMGAPackage:
    """A loaded SMGA file: the model, its metadata and the feature normalisation (if any)."""

    model: SMGA
    metadata: dict[str, str]
    audio_mean: np.ndarray | None
    audio_std: np.ndarray | None
    pose_std: np.ndarray | None = None


def load_smga_safetensors(path: str | os.PathLike[str]) -> SMGAPackage:
    """Load a file written by :func:`save_smga_safetensors` (its config travels with it)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"SMGA weights not found: {path}")
    with open_safetensors(path) as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise WeightsError(f"{path} has no SMGA config in its metadata; use load_smga")
    state = load_safetensors_file(path)
    extra = {
        k[len(DRIVER_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(DRIVER_PREFIX)
    }
    model = SMGA(SMGAConfig(**json.loads(meta["config"])))
    problems = check_state_dict(model, state)
    if problems:
        raise WeightsError(
            f"{path} does not match its own config:\n  " + "\n  ".join(problems[:40])
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)

    def arr(name: str) -> np.ndarray | None:
        return None if name not in extra else extra[name].numpy()

    return SMGAPackage(model.eval(), meta, arr("audio_mean"), arr("audio_std"), arr("pose_std"))


def infer_config(state: dict[str, torch.Tensor], heads: int = 8) -> SMGAConfig:
    """The SMGAConfig an official-layout state dict was built with (heads are not in the
    shapes: the official model uses 8)."""
    try:
        latent, double_kp = state["input_projection.weight"].shape
        layers = 1 + max(
            int(k.split(".")[2]) for k in state if k.startswith("seqTransDecoder.stack.")
        )
        encoders = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("cond_encoder."))
        return SMGAConfig(
            keypoint_dim=double_kp // 2,
            frames=state["null_cond_embed"].shape[1],
            latent_dim=latent,
            ff_dim=state["seqTransDecoder.stack.0.linear1.weight"].shape[0],
            layers=layers,
            heads=heads,
            dropout=0.0,
            audio_dim=state["cond_projection.weight"].shape[1],
            encoder_layers=encoders,
        )
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"not an SMGA state dict ({exc})") from exc


def load_any_smga(path: str | os.PathLike[str], *, heads: int = 8) -> SMGAPackage:
    """Our ``.safetensors`` packages, or official checkpoints (config inferred from shapes)."""
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise InputError(f"attention heads must be a positive integer, got {heads!r}")
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise WeightsError(f"checkpoint not found: {path}")
        with open_safetensors(path) as f:
            ours = "config" in (f.metadata() or {})
        if ours:
            return load_smga_safetensors(path)
    state = read_state_dict(path)
    config = infer_config(state, heads)
    if config.latent_dim % heads:
        raise WeightsError(f"latent width {config.latent_dim} is not divisible by {heads} heads")
    model = load_smga(path, config)
    return SMGAPackage(model, dict(OFFICIAL_METADATA), None, None)


def convert_official_smga(src: str | os.PathLike[str], out: str | os.PathLike[str], *,
                          heads: int = 8) -> Path:  # fmt: skip
    """An official checkpoint → our safetensors (same tensors, no pickle), marked official so
    that it samples and conditions as the checkpoint does (50 steps, η 1, legs masked, …)."""
    pkg = load_any_smga(src, heads=heads)
    if pkg.metadata.get("source") != "official":
        raise WeightsError(f"{src} is not an official SMGA checkpoint")
    save_smga_safetensors(pkg.model, out, extra=dict(OFFICIAL_METADATA))
    return Path(out)
