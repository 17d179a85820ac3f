"""Export specs: one per network — tensor names, dynamic axes with min/opt/max, sample inputs.

A spec is everything an exporter or an engine builder needs to know about a network without
reading its code: ``python -m export.onnx`` exports from it and checks the ONNX file at the
``opt`` sizes (``small`` ones for networks over 1 GB) and at a second size, and the TensorRT
builder (``python -m export.trt``) takes its optimisation profiles from the same ``Axis``
ranges. The runners
(:mod:`mmgt.runtime`) use the same input and output names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mmgt.keypoints import layout
from mmgt.models.smga import SMGA


@dataclass(frozen=True)
class Axis:
    """A dynamic axis: its name and the sizes the engine uses (``opt`` is the export size)."""

    name: str
    min: int
    opt: int
    max: int
    second: int  # a second size the exported file is checked at

    @property
    def small(self) -> int:
        """2, or the nearest size the axis allows: where large networks are checked instead of
        ``opt`` (a CFG pair of 2 frames rather than 12: the same graph, a sixth of the memory)."""
        return min(self.opt, max(self.min, 2))


@dataclass(frozen=True)
class NetworkSpec:
    """How to export one network."""

    name: str
    module: nn.Module  # forward(**inputs) → output(s), in ``outputs`` order
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, dict[int, Axis]]  # input name → {axis index: Axis}
    make_inputs: Callable[[dict[str, int]], dict[str, Tensor]]  # axis sizes → sample inputs

    @property
    def axes(self) -> dict[str, Axis]:
        """Every dynamic axis, by name."""
        return {a.name: a for dims in self.dynamic.values() for a in dims.values()}

    def sample(self, which: str = "opt") -> dict[str, Tensor]:
        """Sample inputs with every dynamic axis at its ``opt`` (or ``second``, …) size."""
        return self.make_inputs({n: getattr(a, which) for n, a in self.axes.items()})


def smga_step(model: SMGA) -> NetworkSpec:
    """One SMGA denoiser call: (noisy poses, reference pose, audio, step, keep) → x̂0.

    ``batch`` is 1 (no guidance) or 2 (the guided pair); ``frames`` runs from one live hop to
    the model's window.
    """
    cfg = model.config
    batch = Axis("batch", 1, 2, 4, 1)
    frames = Axis("frames", 2, min(12, cfg.frames), cfg.frames, max(2, cfg.frames // 2 - 1))

    def make_inputs(size: dict[str, int], seed: int = 0) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        b, t = size["batch"], size["frames"]
        return {
            "x": torch.randn(b, t, layout.OFFICIAL_DIM, generator=g),
            "cond_frame": torch.randn(b, layout.OFFICIAL_DIM, generator=g),
            "audio": torch.randn(b, t, cfg.audio_dim, generator=g),
            "times": torch.randint(0, 1000, (b,), generator=g),
            "keep": torch.arange(b) < (b + 1) // 2,  # a guided pair: conditional, unconditional
        }

    return NetworkSpec(
        name="smga_step",
        module=model.eval(),
        inputs=("x", "cond_frame", "audio", "times", "keep"),
        outputs=("x0",),
        dynamic={
            "x": {0: batch, 1: frames},
            "cond_frame": {0: batch},
            "audio": {0: batch, 1: frames},
            "times": {0: batch},
            "keep": {0: batch},
        },
        make_inputs=make_inputs,
    )
