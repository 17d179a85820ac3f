"""Stage-2 pose guider: pose images → features added after the denoising UNet's ``conv_in``.

The official ``PoseGuider`` (mmgt_official §4.5) is exactly diffusers'
``ControlNetConditioningEmbedding`` (conv_in 3→16, SiLU, pairs of 3×3 convs with stride-2
downsampling through 16/32/96/256 channels, zero-initialised ``conv_out`` → UNet width), applied
per frame; the key names (``conv_in``, ``blocks.0..5``, ``conv_out``) are identical, so it is
reused by import and only the frame folding is added here.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import Tensor


@dataclass(frozen=True)
class PoseGuiderConfig:
    out_channels: int = 320  # = the UNet's first block width
    block_out_channels: tuple[int, ...] = (16, 32, 96, 256)


class PoseGuider(ControlNetConditioningEmbedding):
    """(B, 3, F, H, W) pose images in [0, 1] → (B·F, C, H/8, W/8) features (frames folded)."""

    def __init__(self, config: PoseGuiderConfig = PoseGuiderConfig()) -> None:
        super().__init__(config.out_channels, 3, config.block_out_channels)
        self.config = config

    def forward(self, pose_images: Tensor) -> Tensor:  # type: ignore[override]
        b, c, f, h, w = pose_images.shape
        folded = pose_images.transpose(1, 2).reshape(b * f, c, h, w)
        return super().forward(folded)
