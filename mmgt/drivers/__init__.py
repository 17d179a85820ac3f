"""Drivers: audio features + reference pose → keypoint sequences (the ``Driver`` protocol)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from mmgt.drivers.procedural import ProceduralConfig, ProceduralDriver
from mmgt.errors import InputError
from mmgt.types import Driver

if TYPE_CHECKING:
    from mmgt.backend import Backend

DRIVERS = ("auto", "procedural", "smga")
# The CPU default trained in this repository (see mmgt/weights/README.md).
DEFAULT_SMGA_WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "smga_small.safetensors"


def default_driver_name() -> str:
    """``smga`` when the trained CPU model is shipped, else ``procedural``."""
    return "smga" if DEFAULT_SMGA_WEIGHTS.exists() else "procedural"


def make_driver(
    name: str,
    *,
    seed: int = 0,
    weights: str | os.PathLike[str] | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    eta: float | None = None,
    context: int | None = None,
    join_fade: int | None = None,
    heads: int = 8,
    backend: Backend | None = None,
    ambient: bool | None = None,
    speech_gate: bool | None = None,
    lip_bias: bool | None = None,
) -> Driver:
    """Build a driver by name (see :data:`DRIVERS`; ``auto`` is :func:`default_driver_name`).

    ``smga`` loads ``weights`` — one of our ``.safetensors`` packages (default: the shipped CPU
    model) or an official checkpoint — and samples with its recommended settings unless
    ``steps``/``guidance``/``eta``/``context``/``join_fade`` override them (official: 50 / 2 / 1
    / 8 / 4; a file trained here that records none: 4 / 1 / 0 / 8 / 4, the shipped model's; see
    :class:`mmgt.drivers.smga.SamplerSettings`).
    ``backend`` (default torch) runs its denoiser on ONNX Runtime or TensorRT from the exported
    files of the same weights, with torch's intra-op thread count. ``ambient`` lays seeded blinks,
    head sway and breathing over the model's output (default: on for models trained here, off
    for official checkpoints; see :mod:`mmgt.drivers.ambient`). ``speech_gate`` has the
    features gated so that noise without speech reaches the model as silence (default: on for
    models trained here on light features; see :mod:`mmgt.audio.gate`). ``lip_bias`` takes
    the model's closed-mouth bias off, measured once per avatar (same default; see
    :mod:`mmgt.drivers.lip_bias`).
    """
    if name == "auto":
        name = default_driver_name()
    if name == "procedural":
        return ProceduralDriver(ProceduralConfig(seed=seed))
    if name == "smga":
        from mmgt.drivers.ambient import AmbientMotion
        from mmgt.drivers.smga import SamplerSettings, SMGADriver
        from mmgt.weights.smga import load_any_smga

        path = Path(weights) if weights is not None else DEFAULT_SMGA_WEIGHTS
        if not path.exists():
            raise InputError(
                f"SMGA weights not found: {path}"
                + ("" if weights else " (no trained CPU model is shipped yet; pass --smga-weights)")
            )
        pkg = load_any_smga(path, heads=heads)
        official = pkg.metadata.get("source") == "official"
        meta = pkg.metadata
        settings = SamplerSettings(
            steps=steps if steps is not None else int(meta.get("steps", 50 if official else 4)),
            guidance=guidance
            if guidance is not None
            else float(meta.get("guidance", 2.0 if official else 1.0)),
            eta=eta if eta is not None else float(meta.get("eta", 1.0 if official else 0.0)),
            context=context if context is not None else int(meta.get("context", 8)),
            join_fade=join_fade if join_fade is not None else SamplerSettings.join_fade,
            seed=seed,
        )
        with_ambient = not official if ambient is None else ambient
        feature_kind = meta.get("feature_kind", "light-v1")
        if speech_gate is None:
            speech_gate = not official and feature_kind == "light-v1"
        step = None
        if backend is not None and backend.name != "torch":
            import torch

            threads = torch.get_num_threads()  # the engine's budget (1) or render's --threads
            step = backend.runner("smga_step", pkg.model, threads=threads)
        return SMGADriver(
            pkg.model,
            step=step,
            feature_kind=feature_kind,
            settings=settings,
            audio_mean=pkg.audio_mean,
            audio_std=pkg.audio_std,
            pose_std=pkg.pose_std,
            residual_anchor=meta.get("residual_anchor", "reference"),
            ambient=AmbientMotion(seed=seed) if with_ambient else None,
            mask_reference_legs=official,
            speech_gate=speech_gate,
            correct_lip_bias=(not official and feature_kind == "light-v1")
            if lip_bias is None
            else lip_bias,
        )
    raise ValueError(f"unknown driver {name!r}; choose one of {', '.join(DRIVERS)}")


__all__ = [
    "DEFAULT_SMGA_WEIGHTS",
    "DRIVERS",
    "default_driver_name",
    "ProceduralConfig",
    "ProceduralDriver",
    "make_driver",
]
