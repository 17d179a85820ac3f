"""ReferenceNet and the reference bank: spatial detail of the avatar photo for every frame.

The ReferenceNet is an SD1.5 ``UNet2DConditionModel`` (diffusers, by import) run once per avatar
on the reference latent at timestep 0 with the CLIP embedding as context. Its head
(``conv_norm_out``/``conv_out``) is removed, as in the official copy, so its state dict has the
official keys. While it runs, the self-attention processor of each of its 16 transformer
blocks records its input, i.e. ``norm1`` of the block input (official "writer"; the bank).

In the denoising UNet the processor of the spatial self-attention with the same module name
reads that bank: keys/values become ``[LN1 h, bank]`` (the bank repeated over frames) while the
queries stay ``LN1 h`` (official "reader", mmgt_official §4.6). Pairing by module name equals
the official width-sorted pairing for this structure (fixture README C.8). Rows flagged as the
unconditional CFG half attend without the bank, as the official reader recomputes them.

The per-call state travels in ``cross_attention_kwargs`` (``reference=``), never in module
attributes, so one network can serve many sessions from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from torch import Tensor, nn

BANK_DTYPE = torch.float16  # the official reader stores the bank in float16 even in fp32 runs


def attend(attn: Attention, query_in: Tensor, kv_in: Tensor) -> Tensor:
    """Multi-head scaled-dot-product attention with ``attn``'s projections (no mask, no norm)."""
    n, lq, _ = query_in.shape  # (N, Lq, C) ; kv_in (N, Lk, Ckv)
    if kv_in.shape[1] == 1:
        # One key (the CLIP image embedding is one token): its softmax weight is exactly 1, so
        # every query receives the projected value. Skipping the query projection, the scores
        # and the per-token output projection saves ~2% of the official UNet's FLOPs.
        return attn.to_out[1](attn.to_out[0](attn.to_v(kv_in))).expand(n, lq, -1)
    return attend_projected(attn, attn.to_q(query_in), attn.to_k(kv_in), attn.to_v(kv_in))


def attend_projected(attn: Attention, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention on projected queries (N, Lq, C) and keys/values (N, Lk, C), then ``to_out``."""
    n, lq, c = q.shape
    heads = attn.heads
    q, k, v = (t.reshape(n, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # (N, H, Lq, d)
    return attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(n, lq, c)))


def repeat_per_frame(t: Tensor, frames: int) -> Tensor:
    """(B, …) → (B·frames, …), each row repeated ``frames`` times in a row.

    Equals ``repeat_interleave(frames, 0)``, written as expand + reshape because the ONNX
    exporter translates a dynamic ``repeat_interleave`` wrongly for B > 1."""
    return t[:, None].expand(t.shape[0], frames, *t.shape[1:]).reshape(-1, *t.shape[1:])


@dataclass
class ReferenceWrite:
    """Collects the bank during a ReferenceNet pass: block name → (B, h·w, C)."""

    bank: dict[str, Tensor] = field(default_factory=dict)
    dtype: torch.dtype = BANK_DTYPE


@dataclass(frozen=True)
class ReferenceRead:
    """Bank to read in a denoising pass.

    ``bank`` values are (1, h·w, C) (one avatar; broadcast over the batch) or (B, h·w, C);
    the denoising batch is folded as (B·frames); its first ``uncond_rows`` rows attend without
    the bank (the unconditional half of a CFG batch). ``keep`` (B,) bool says the same with a
    tensor: samples whose entry is False attend without the bank (exported networks use it:
    one graph for both halves of CFG).
    """

    bank: Mapping[str, Tensor]
    frames: int
    uncond_rows: int = 0
    keep: Tensor | None = None


class SelfAttnProcessor:
    """Self-attention that writes or reads the reference bank under its block's name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        reference: ReferenceWrite | ReferenceRead | None = None,
    ) -> Tensor:
        if isinstance(reference, ReferenceWrite):
            reference.bank[self.name] = hidden_states.to(reference.dtype)
        if not isinstance(reference, ReferenceRead) or self.name not in reference.bank:
            return attend(attn, hidden_states, hidden_states)
        n = hidden_states.shape[0]  # (B·F, L, C)
        rows = reference.bank[self.name].to(hidden_states.dtype)  # (1 or B, L, C)
        # Keys and values act per token, so the bank is projected once per bank row and then
        # spread over the frames (the official code projects the spread bank: the same values,
        # at 1/F of the cost; ~2% of the official UNet's FLOPs).
        k_bank, v_bank = (
            proj(rows).expand(n, -1, -1)  # one avatar for every row
            if rows.shape[0] == 1
            else repeat_per_frame(proj(rows), reference.frames)  # (B, …) → (B·F, …)
            for proj in (attn.to_k, attn.to_v)
        )
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if reference.keep is not None:
            # Rows of samples that drop the bank attend to their own tokens twice instead:
            # duplicated key/value pairs leave softmax attention unchanged, so this equals
            # leaving the bank out, with one graph for both halves of CFG and no mask.
            if k_bank.shape != k.shape:
                raise ValueError(f"bank {tuple(rows.shape)} does not match the hidden states "
                                 f"{tuple(hidden_states.shape)}")  # fmt: skip
            keep = repeat_per_frame(reference.keep.to(torch.bool), reference.frames)[:, None, None]
            k_bank, v_bank = torch.where(keep, k_bank, k), torch.where(keep, v_bank, v)
            return attend_projected(attn, q, torch.cat([k, k_bank], 1), torch.cat([v, v_bank], 1))
        u = reference.uncond_rows
        cond = attend_projected(
            attn, q[u:], torch.cat([k[u:], k_bank[u:]], 1), torch.cat([v[u:], v_bank[u:]], 1)
        )
        if u == 0:
            return cond
        return torch.cat([attend_projected(attn, q[:u], k[:u], v[:u]), cond], 0)


class CrossAttnProcessor:
    """Plain cross-attention that accepts (and ignores) the ``reference`` argument."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        reference: object = None,
    ) -> Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        return attend(attn, hidden_states, context)


def install_reference_processors(unet: nn.Module) -> list[str]:
    """Give every spatial transformer block of ``unet`` the bank-aware processors.

    Returns the block names (the bank keys), in module order.
    """
    from diffusers.models.attention import BasicTransformerBlock

    names = []
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            module.attn1.set_processor(SelfAttnProcessor(name))
            if module.attn2 is not None:
                module.attn2.set_processor(CrossAttnProcessor())
            names.append(name)
    return names


def build_reference_unet(unet_config: dict) -> UNet2DConditionModel:
    """An SD1.5-layout ReferenceNet without its output head, with bank processors installed."""
    unet = UNet2DConditionModel(**unet_config)
    unet.conv_norm_out = None
    unet.conv_act = None
    unet.conv_out = nn.Identity()
    install_reference_processors(unet)
    return unet


def reference_bank(
    unet: UNet2DConditionModel,
    reference_latent: Tensor,  # (B, 4, h, w), already scaled by the VAE factor
    clip_embed: Tensor,  # (B, 1, D) image embedding (cross-attention context)
    dtype: torch.dtype = BANK_DTYPE,
) -> dict[str, Tensor]:
    """Run the ReferenceNet once (timestep 0) and return its bank: name → (B, h·w, C).

    Differentiable (training runs it with gradients); wrap inference in ``torch.no_grad``."""
    writer = ReferenceWrite(dtype=dtype)
    t = torch.zeros((), dtype=torch.long, device=reference_latent.device)
    unet(
        reference_latent,
        t,
        encoder_hidden_states=clip_embed,
        cross_attention_kwargs={"reference": writer},
        return_dict=False,
    )
    return writer.bank


def bank_names(unet: nn.Module) -> list[str]:
    """The bank keys a network writes or reads, in module order (its transformer blocks)."""
    return [
        m.processor.name
        for m in unet.modules()
        if isinstance(getattr(m, "processor", None), SelfAttnProcessor)
    ]
