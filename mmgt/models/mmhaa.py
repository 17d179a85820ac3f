"""MM-HAA: motion-masked hierarchical audio attention (the stage-2 audio modules).

Each module (official ``Transformer3DModel(use_audio_module=True)`` holding one
``AudioTemporalBasicTransformerBlock``; mmgt_official §4.3) does, on tokens of one frame:

1. ``h += attn1(LN1 h)``: spatial self-attention (no reference features);
2. three audio cross-attention branches on ``LN2 h`` (keys/values = that frame's audio
   tokens); branch *b* is multiplied by its motion mask at this UNet level, passes a
   zero-initialised 1×1 convolution (the adapter), and the branches are summed with region
   weights: ``h += s0·A_full + s1·A_face + s2·A_lip``;
3. ``h += FF(LN3 h)``.

Branches keep the official names: ``attn2_0``/``zero_conv_full``, ``attn2_1``/``zero_conv_face``,
``attn2_2``/``zero_conv_lip``. The modules sit only in the first three down blocks (level k =
down-block index). Official quirk kept: the inner width is heads × (block *input* channels //
heads), so the first module of a widening block is narrower than the features around it.

Mask wiring (which raw motion masks feed which branch) lives in :func:`branch_masks`:

* ``official`` (what ``audio2vid`` runs): full = 1 + lips, face = face ∪ hands, lip = lips, with
  region weights [1, 1, 2] (only the gradient-checkpoint branch of the official UNet passes
  them; training effectively used [1, 1, 1]);
* ``paper`` (the paper's equation): the three adapters see background = 1 − (face ∪ hands),
  face ∪ hands and lips, in that slot order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

from mmgt.types import MaskSet

BRANCHES = ("full", "face", "lip")
MASK_MODES = ("official", "paper")
OFFICIAL_REGION_WEIGHTS = (1.0, 1.0, 2.0)


@dataclass(frozen=True)
class BranchMasks:
    """Per-level masks of the three branches; each level is (N, h·w) float, N = batch·frames."""

    full: tuple[Tensor, ...]
    face: tuple[Tensor, ...]
    lip: tuple[Tensor, ...]

    def level(self, k: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.full[k], self.face[k], self.lip[k]

    def repeat(self, times: int) -> BranchMasks:
        """The masks for a batch repeated ``times`` (e.g. the CFG pair)."""
        rep = lambda levels: tuple(m.repeat(times, 1) for m in levels)  # noqa: E731
        return BranchMasks(rep(self.full), rep(self.face), rep(self.lip))

    def frames(self, index: Sequence[int] | Tensor) -> BranchMasks:
        """Rows ``index`` of every level (a window of a single-sample clip)."""
        pick = lambda levels: tuple(m[index] for m in levels)  # noqa: E731
        return BranchMasks(pick(self.full), pick(self.face), pick(self.lip))

    def to(self, device: torch.device | str, dtype: torch.dtype) -> BranchMasks:
        move = lambda levels: tuple(m.to(device, dtype) for m in levels)  # noqa: E731
        return BranchMasks(move(self.full), move(self.face), move(self.lip))

    @staticmethod
    def zeros_like(other: BranchMasks) -> BranchMasks:
        z = lambda levels: tuple(torch.zeros_like(m) for m in levels)  # noqa: E731
        return BranchMasks(z(other.full), z(other.face), z(other.lip))


def branch_masks(masks: Sequence[MaskSet], mode: str = "official", levels: int = 3) -> BranchMasks:
    """Wire the raw motion-mask pyramids of consecutive frames into the three MM-HAA branches.

    ``masks[i].pyramid`` must hold ``face_hands`` and ``lips`` (and for ``paper``, nothing else:
    background is derived). Returns levels 0..levels−1 as (frames, h·w) float32 tensors.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")

    def stack(name: str, k: int) -> Tensor:
        return torch.from_numpy(np.stack([m.pyramid[name][k].reshape(-1) for m in masks]))

    face = tuple(stack("face_hands", k) for k in range(levels))
    lip = tuple(stack("lips", k) for k in range(levels))
    if mode == "official":
        full = tuple(1.0 + m for m in lip)
    else:
        full = tuple((1.0 - m).clamp(min=0.0) for m in face)
    return BranchMasks(full, face, lip)


def _to_map(tokens: Tensor, height: int, width: int) -> Tensor:
    n, _, c = tokens.shape  # (N, h·w, C) → (N, C, h, w)
    return tokens.reshape(n, height, width, c).permute(0, 3, 1, 2)


def _to_tokens(fmap: Tensor) -> Tensor:
    n, c = fmap.shape[:2]  # (N, C, h, w) → (N, h·w, C)
    return fmap.permute(0, 2, 3, 1).reshape(n, -1, c)


class AudioAttentionBlock(nn.Module):
    """Official ``AudioTemporalBasicTransformerBlock`` in its three-branch form."""

    def __init__(self, dim: int, heads: int, audio_dim: int) -> None:
        super().__init__()
        self.zero_conv_full = nn.Conv2d(dim, dim, 1)
        self.zero_conv_face = nn.Conv2d(dim, dim, 1)
        self.zero_conv_lip = nn.Conv2d(dim, dim, 1)
        for conv in (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        head_dim = dim // heads
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn2_0, self.attn2_1, self.attn2_2 = (
            Attention(query_dim=dim, cross_attention_dim=audio_dim, heads=heads, dim_head=head_dim)
            for _ in BRANCHES
        )
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        hidden: Tensor,  # (N, h·w, D)
        audio_tokens: Tensor,  # (N, tokens, audio_dim)
        masks: tuple[Tensor, Tensor, Tensor],  # full, face, lip: each (N, h·w)
        region_weights: Sequence[float],
        size: tuple[int, int],
    ) -> Tensor:
        hidden = self.attn1(self.norm1(hidden)) + hidden
        normed = self.norm2(hidden)
        adapters = (self.zero_conv_full, self.zero_conv_face, self.zero_conv_lip)
        attns = (self.attn2_0, self.attn2_1, self.attn2_2)
        branch = [
            _to_tokens(conv(_to_map(attn(normed, audio_tokens) * mask[:, :, None], *size)))
            for attn, conv, mask in zip(attns, adapters, masks, strict=True)
        ]
        s0, s1, s2 = region_weights
        hidden = s0 * branch[0] + s1 * branch[1] + s2 * branch[2] + hidden
        return self.ff(self.norm3(hidden)) + hidden


class AudioAttentionModule(nn.Module):
    """GroupNorm → 1×1 ``proj_in`` (C → D) → the block → 1×1 ``proj_out`` (D → C) → + input."""

    def __init__(
        self, channels: int, inner_dim: int, heads: int, audio_dim: int, level: int
    ) -> None:
        super().__init__()
        self.level = level
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner_dim, 1)
        self.transformer_blocks = nn.ModuleList([AudioAttentionBlock(inner_dim, heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner_dim, channels, 1)

    def forward(
        self,
        hidden: Tensor,  # (N, C, h, w), N = batch·frames
        audio_tokens: Tensor,  # (N, tokens, audio_dim)
        masks: BranchMasks,
        region_weights: Sequence[float],
    ) -> Tensor:
        size = hidden.shape[-2:]
        x = _to_tokens(self.proj_in(self.norm(hidden)))
        for block in self.transformer_blocks:
            x = block(x, audio_tokens, masks.level(self.level), region_weights, size)
        return self.proj_out(_to_map(x, *size)) + hidden
