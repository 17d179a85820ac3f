"""SMGA, stage 1 of MMGT: a dual-stream diffusion transformer from audio to whole-body keypoints.

The network predicts the clean pose sequence x̂0 (official normalised 402-vectors) from a noisy
sequence ``x``, the reference pose ``cond_frame`` (repeated over time), per-frame audio
features and the diffusion step. Structure (mmgt_official §2.4), for latent width D:

1. Face/body split of the 402 channels by M^f (keypoints 24–91) / M^b; each stream is
   ``[x ⊙ M, cond_frame ⊙ M]`` projected by one shared ``input_projection`` (804 → D).
2. Audio tokens: ``cond_projection`` → two pre-LN transformer encoder layers → (B, T, D);
   for classifier-free guidance dropped samples use the learned ``null_cond_embed``.
3. FiLM vector ``t = to_time_cond(time_mlp(step)) + MLP(mean of audio tokens)`` (or the
   learned ``null_cond_hidden``), and two time tokens appended to the audio tokens as the
   cross-attention memory (after a LayerNorm).
4. Decoder layers, each with separate face and body blocks (self-attention, FiLM,
   cross-attention to the memory, FiLM), summed, then a FiLM-modulated feed-forward.
   Official quirk kept: layer k > 0 gets the previous layer's output as its *face* input and
   the original body embedding as its *body* input.
5. ``final_layer`` (D → 402) gives x̂0.

Rotary positions are applied to the whole D-wide inputs of the attention (before the in-
projections), on interleaved feature pairs, as the official ``rotary_embedding_torch`` does.
Module and parameter names are the official ones, so official state dicts load strictly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmgt.keypoints import layout


@dataclass(frozen=True)
class SMGAConfig:
    """SMGA sizes. ``frames`` is the window length the learned null condition covers."""

    keypoint_dim: int = layout.OFFICIAL_DIM  # 402 = 134 keypoints × (x, y, score)
    frames: int = 80  # 3.2 s at 25 fps
    latent_dim: int = 512
    ff_dim: int = 1024
    layers: int = 8
    heads: int = 8
    dropout: float = 0.1
    audio_dim: int = 1059  # WavLM-Large (1024) ‖ 35 EDGE librosa features
    encoder_layers: int = 2


PRESETS: dict[str, SMGAConfig] = {
    # The released model (SMGA.py: GestureDecoder(402, 80, 512, 1024, 8, 8, 0.1, 1059)).
    "official": SMGAConfig(),
    # The reduced-width configuration of the official fixtures (tests).
    "fixture": SMGAConfig(latent_dim=64, ff_dim=128, layers=2, heads=4, dropout=0.0),
    # CPU presets driven by the 43-d light features (mmgt.audio.features). "small" is the
    # shipped default: cheap enough for live use at a 4-frame hop (see docs/performance.md).
    "small": SMGAConfig(frames=32, latent_dim=64, ff_dim=128, layers=2, heads=4, audio_dim=43),
    "tiny": SMGAConfig(frames=16, latent_dim=32, ff_dim=64, layers=1, heads=2, audio_dim=43),
}


def preset(name: str, **overrides: object) -> SMGAConfig:
    """A named configuration, optionally with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown SMGA preset {name!r}; choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


_FACE_MASK = torch.from_numpy(layout.FACE_CHANNEL_MASK.astype("float32"))  # (402,)


def face_body_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """(…, 402) → (face, body): M^f keeps keypoints 24–91 (all three channels), M^b the rest."""
    mask = _FACE_MASK.to(device=x.device, dtype=x.dtype)
    return x * mask, x * (1 - mask)


class RotaryEmbedding(nn.Module):
    """Rotary positions on interleaved feature pairs (x₀, x₁) → (x₀cos − x₁sin, x₁cos + x₀sin)."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _cos_sin(self, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        if torch.compiler.is_compiling():  # export/compile trace: no Python-side cache
            return self._compute_cos_sin(length, like)
        key = (length, like.dtype, like.device, self.freqs.data_ptr(), self.freqs._version)
        if key not in self._cache or torch.is_grad_enabled():
            value = self._compute_cos_sin(length, like)
            if torch.is_grad_enabled():
                return value
            self._cache[key] = value
        return self._cache[key]

    def _compute_cos_sin(self, length: int, like: Tensor) -> tuple[Tensor, Tensor]:
        pos = torch.arange(length, device=like.device, dtype=self.freqs.dtype)
        angles = (pos[:, None] * self.freqs[None, :]).repeat_interleave(2, dim=-1)  # (T, D)
        sign = torch.ones_like(angles)
        sign[:, 0::2] = -1.0  # rotate_half: (x0, x1) → (−x1, x0)
        return angles.cos().to(like), (angles.sin() * sign).to(like)

    def forward(self, x: Tensor) -> Tensor:
        """Rotate (B, T, D) features by their position along T."""
        cos, signed_sin = self._cos_sin(x.shape[-2], x)
        swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) per pair
        return x * cos + swapped * signed_sin


class SinusoidalPosEmb(nn.Module):
    """Diffusion-step embedding: [sin(t·f), cos(t·f)], f_i = exp(−ln(10⁴)·i/(D/2 − 1))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        args = t[:, None] * freqs[None, :]  # (B, D/2)
        return torch.cat((args.sin(), args.cos()), dim=-1)


def attend(mha: nn.MultiheadAttention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``mha(q, k, v)`` (batch first, no masks) without nn.MultiheadAttention's Python overhead.

    Same parameters and maths: packed in-projection, scaled dot-product attention per head,
    out-projection; dropout on the attention weights only while training.
    """
    w, b = mha.in_proj_weight, mha.in_proj_bias
    d, h = mha.embed_dim, mha.num_heads
    qp = F.linear(q, w[:d], b[:d]).unflatten(-1, (h, -1)).transpose(1, 2)  # (B, h, Tq, d/h)
    kp = F.linear(k, w[d : 2 * d], b[d : 2 * d]).unflatten(-1, (h, -1)).transpose(1, 2)
    vp = F.linear(v, w[2 * d :], b[2 * d :]).unflatten(-1, (h, -1)).transpose(1, 2)
    p = mha.dropout if mha.training else 0.0
    out = F.scaled_dot_product_attention(qp, kp, vp, dropout_p=p)  # (B, h, Tq, d/h)
    return mha.out_proj(out.transpose(1, 2).flatten(-2))


class DenseFiLM(nn.Module):
    """FiLM generator: (scale, shift) = Linear(Mish(t)); applied as (1 + scale)·y + shift."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(dim, 2 * dim))

    def forward(self, y: Tensor, t: Tensor) -> Tensor:
        scale, shift = self.block(t)[:, None, :].chunk(2, dim=-1)  # each (B, 1, D)
        return (scale + 1) * y + shift


class EncoderLayer(nn.Module):
    """Pre-LN transformer encoder layer over the audio tokens (rotary on queries and keys)."""

    def __init__(self, cfg: SMGAConfig, rotary: RotaryEmbedding | None) -> None:
        super().__init__()
        d = cfg.latent_dim
        self.self_attn = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.linear1 = nn.Linear(d, cfg.ff_dim)
        self.linear2 = nn.Linear(cfg.ff_dim, d)
        self.norm1 = nn.LayerNorm(d)
        self.norm2 = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.rotary = rotary

    def forward(self, x: Tensor) -> Tensor:  # (B, T, D)
        h = self.norm1(x)
        qk = self.rotary(h) if self.rotary is not None else h
        x = x + self.dropout(attend(self.self_attn, qk, qk, h))
        ff = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(x)))))
        return x + self.dropout(ff)


class DualStreamDecoderLayer(nn.Module):
    """Face and body blocks (self-attn + FiLM, cross-attn + FiLM), summed, FiLM feed-forward.

    ``self_attn``, ``norm_face_3``, ``norm_body_3``, ``film_face_3`` and ``film_body_3`` exist
    in the official layer (and its checkpoints) but take no part in the computation.
    """

    def __init__(self, cfg: SMGAConfig, rotary: RotaryEmbedding | None) -> None:
        super().__init__()
        d, h, p = cfg.latent_dim, cfg.heads, cfg.dropout
        for stream in ("face", "body"):
            setattr(self, f"{stream}_self_attn", nn.MultiheadAttention(d, h, p, batch_first=True))
            setattr(self, f"{stream}_cross_attn", nn.MultiheadAttention(d, h, p, batch_first=True))
        self.self_attn = nn.MultiheadAttention(d, h, p, batch_first=True)  # unused (official)
        self.linear1 = nn.Linear(d, cfg.ff_dim)
        self.linear2 = nn.Linear(cfg.ff_dim, d)
        for stream in ("face", "body"):
            for i in (1, 2, 3):
                setattr(self, f"norm_{stream}_{i}", nn.LayerNorm(d))
                setattr(self, f"film_{stream}_{i}", DenseFiLM(d))
        self.norm_final = nn.LayerNorm(d)
        self.film_final = DenseFiLM(d)
        self.dropout = nn.Dropout(p)
        self.rotary = rotary

    def _rot(self, x: Tensor) -> Tensor:
        return self.rotary(x) if self.rotary is not None else x

    def _block(
        self, stream: str, x: Tensor, memory: Tensor, memory_rot: Tensor, t: Tensor
    ) -> Tensor:
        sa, ca = getattr(self, f"{stream}_self_attn"), getattr(self, f"{stream}_cross_attn")
        h = getattr(self, f"norm_{stream}_1")(x)
        q = self._rot(h)
        y = self.dropout(attend(sa, q, q, h))
        x = x + getattr(self, f"film_{stream}_1")(y, t)
        h = getattr(self, f"norm_{stream}_2")(x)
        y = self.dropout(attend(ca, self._rot(h), memory_rot, memory))
        return x + getattr(self, f"film_{stream}_2")(y, t)

    def forward(
        self, x_face: Tensor, x_body: Tensor, memory: Tensor, t: Tensor, memory_rot: Tensor
    ) -> Tensor:
        """``memory_rot`` is ``rotary(memory)``, computed once for all layers."""
        merged = self._block("face", x_face, memory, memory_rot, t)
        merged = merged + self._block("body", x_body, memory, memory_rot, t)
        ff = self.linear2(self.dropout(F.gelu(self.linear1(self.norm_final(merged)))))
        return merged + self.film_final(self.dropout(ff), t)


class LayerStack(nn.Module):
    """The official ``DecoderLayerStack``: every layer re-reads the original body stream."""

    def __init__(self, layers: list[DualStreamDecoderLayer]) -> None:
        super().__init__()
        self.stack = nn.ModuleList(layers)

    def forward(self, x_face: Tensor, x_body: Tensor, memory: Tensor, t: Tensor) -> Tensor:
        rot = self.stack[0].rotary if len(self.stack) else None
        memory_rot = rot(memory) if rot is not None else memory
        x = x_face
        for layer in self.stack:
            x = layer(x, x_body, memory, t, memory_rot)
        return x


class SMGA(nn.Module):
    """The SMGA denoiser (the official ``GestureDecoder``); predicts x̂0. No I/O."""

    def __init__(self, config: SMGAConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SMGAConfig()
        d = cfg.latent_dim
        self.rotary = RotaryEmbedding(d)  # one module, registered under every layer (official)
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(d), nn.Linear(d, 4 * d), nn.Mish())
        self.to_time_cond = nn.Sequential(nn.Linear(4 * d, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * d, 2 * d))
        self.null_cond_embed = nn.Parameter(torch.randn(1, cfg.frames, d))
        self.null_cond_hidden = nn.Parameter(torch.randn(1, d))
        self.norm_cond = nn.LayerNorm(d)
        self.input_projection = nn.Linear(2 * cfg.keypoint_dim, d)
        self.cond_encoder = nn.Sequential(
            *[EncoderLayer(cfg, self.rotary) for _ in range(cfg.encoder_layers)]
        )
        self.cond_projection = nn.Linear(cfg.audio_dim, d)
        self.non_attn_cond_projection = nn.Sequential(
            nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d)
        )
        self.seqTransDecoder = LayerStack(
            [DualStreamDecoderLayer(cfg, self.rotary) for _ in range(cfg.layers)]
        )
        self.final_layer = nn.Linear(d, cfg.keypoint_dim)

    def forward(
        self,
        x: Tensor,
        cond_frame: Tensor,
        audio: Tensor,
        times: Tensor,
        keep: Tensor | None = None,
    ) -> Tensor:
        """x̂0 for noisy poses.

        Args:
            x: (B, T, 402) noisy pose sequence (official normalisation).
            cond_frame: (B, 402) reference pose.
            audio: (B, T, audio_dim) per-frame audio features.
            times: (B,) diffusion steps.
            keep: (B,) bool, False where the audio condition is dropped (classifier-free
                guidance); ``None`` keeps it everywhere.
        Returns:
            (B, T, 402) predicted clean sequence.
        """
        b, frames = x.shape[:2]
        if frames > self.config.frames:
            raise ValueError(f"window of {frames} frames exceeds the model's {self.config.frames}")
        face_x, body_x = face_body_split(x)
        face_c, body_c = face_body_split(cond_frame[:, None, :].expand(-1, frames, -1))
        x_face = self.input_projection(torch.cat([face_x, face_c], dim=-1))  # (B, T, D)
        x_body = self.input_projection(torch.cat([body_x, body_c], dim=-1))

        tokens = self.cond_encoder(self.cond_projection(audio))  # (B, T, D)
        if keep is None:
            keep = torch.ones(b, dtype=torch.bool, device=x.device)
        null = self.null_cond_embed[:, :frames].to(tokens.dtype)
        tokens = torch.where(keep[:, None, None], tokens, null)
        hidden = self.non_attn_cond_projection(tokens.mean(dim=-2))  # (B, D)
        hidden = torch.where(keep[:, None], hidden, self.null_cond_hidden.to(hidden.dtype))

        t_hidden = self.time_mlp(times)  # (B, 4D)
        t = self.to_time_cond(t_hidden) + hidden  # FiLM vector (B, D)
        t_tokens = self.to_time_tokens(t_hidden).unflatten(-1, (2, -1))  # (B, 2, D)
        memory = self.norm_cond(torch.cat([tokens, t_tokens], dim=-2))  # (B, T + 2, D)

        out = self.seqTransDecoder(x_face, x_body, memory, t)
        return self.final_layer(out)

    def guided(
        self, x: Tensor, cond_frame: Tensor, audio: Tensor, times: Tensor, weight: float
    ) -> Tensor:
        """Classifier-free guidance ``unc + (cond − unc)·w``, as one batched forward pass."""
        return guided(self, x, cond_frame, audio, times, weight)


def guided(
    forward: Callable[..., Tensor],
    x: Tensor,
    cond_frame: Tensor,
    audio: Tensor,
    times: Tensor,
    weight: float,
) -> Tensor:
    """Classifier-free guidance with one batched call of ``forward(x, cond_frame, audio, times,
    keep)`` (the module, or a driver's runner): the first half keeps the audio, the second
    half drops it."""
    b = x.shape[0]
    keep = torch.arange(2 * b, device=x.device) < b
    both = forward(
        torch.cat([x, x]),
        torch.cat([cond_frame, cond_frame]),
        torch.cat([audio, audio]),
        torch.cat([times, times]),
        keep,
    )
    cond, unc = both[:b], both[b:]
    return unc + (cond - unc) * weight
