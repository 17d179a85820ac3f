"""AnimateDiff-style temporal motion modules of the stage-2 denoising UNet.

Structure and key names follow the official ``VanillaTemporalModule`` (AnimateDiff
``mm_sd_v15_v2`` layout, mmgt_official §4.2): GroupNorm(32, eps 1e-6) → Linear ``proj_in`` →
one block of two temporal self-attentions (LayerNorm, then sinusoidal positions added to the
normed input, attention over the frames of each spatial location) and a GEGLU feed-forward →
Linear ``proj_out`` (zero-initialised, so a fresh module is the identity) → residual.

Tensors arrive folded, (B·F, C, H, W) with frames of one sample contiguous; the module unfolds
them to attend over F.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn


class PositionalEncoding(nn.Module):
    """Sinusoidal frame positions, a saved buffer ``pe`` of shape (1, max_len, dim)."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: Tensor) -> Tensor:
        """(B, F, HW, C) + the positions of its F frames."""
        return x + self.pe[:, : x.shape[1], None]


class TemporalAttention(Attention):
    """Self-attention over frames, per spatial location (official ``VersatileAttention``)."""

    def __init__(self, dim: int, heads: int, max_len: int) -> None:
        super().__init__(query_dim=dim, heads=heads, dim_head=dim // heads)
        self.pos_encoder = PositionalEncoding(dim, max_len)

    def forward(self, hidden: Tensor, frames: int) -> Tensor:  # type: ignore[override]
        """Attention over the F frames of each location, as the official module computes it.

        The projections act on channels only, so they run in the folded layout, and a single
        permutation per tensor moves frames and heads into place (rather than unfolding the
        input, then splitting heads): 4 transposes per call instead of 6."""
        n, hw, c = hidden.shape  # (B·F, HW, C)
        b, heads = n // frames, self.heads
        x = self.pos_encoder(hidden.reshape(b, frames, hw, c))

        def split(t: Tensor) -> Tensor:  # (B, F, HW, C) → (B·HW, H, F, d)
            t = t.reshape(b, frames, hw, heads, c // heads).permute(0, 2, 3, 1, 4)
            return t.reshape(b * hw, heads, frames, c // heads)

        q, k, v = (split(proj(x)) for proj in (self.to_q, self.to_k, self.to_v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B·HW, H, F, d)
        out = out.reshape(b, hw, heads, frames, c // heads).permute(0, 3, 1, 2, 4)
        return self.to_out[1](self.to_out[0](out.reshape(n, hw, c)))  # (B·F, HW, C)


class TemporalBlock(nn.Module):
    def __init__(self, dim: int, heads: int, max_len: int, attentions: int = 2) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            TemporalAttention(dim, heads, max_len) for _ in range(attentions)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(attentions))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, hidden: Tensor, frames: int) -> Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            hidden = attention(norm(hidden), frames) + hidden
        return self.ff(self.ff_norm(hidden)) + hidden


class TemporalTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, max_len: int, blocks: int = 1) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList(
            TemporalBlock(channels, heads, max_len) for _ in range(blocks)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden: Tensor, frames: int) -> Tensor:
        n, c, h, w = hidden.shape  # (B·F, C, H, W)
        x = self.norm(hidden).permute(0, 2, 3, 1).reshape(n, h * w, c)
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, frames)
        x = self.proj_out(x).reshape(n, h, w, c).permute(0, 3, 1, 2)
        return x + hidden


class MotionModule(nn.Module):
    """Official ``VanillaTemporalModule``: a named wrapper around the temporal transformer."""

    def __init__(self, channels: int, heads: int = 8, max_len: int = 32) -> None:
        super().__init__()
        self.max_len = max_len
        self.temporal_transformer = TemporalTransformer(channels, heads, max_len)

    def forward(self, hidden: Tensor, frames: int) -> Tensor:
        if frames > self.max_len:
            raise ValueError(f"{frames} frames exceed the motion modules' {self.max_len} positions")
        return self.temporal_transformer(hidden, frames)
