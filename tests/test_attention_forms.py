"""The stage-2 attention layers compute what the official code computes, in cheaper forms:
one-key cross-attention skips the scores, the reference bank is projected once per bank row,
and the temporal attention permutes once per tensor. Each is checked against the official
formulation written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from mmgt.models.motion import TemporalAttention
from mmgt.models.reference import (
    CrossAttnProcessor,
    ReferenceRead,
    SelfAttnProcessor,
    repeat_per_frame,
)

DIM, HEADS = 16, 4


def official_attention(attn: Attention, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Project, split heads, softmax attention over every key, merge, output projection."""
    n, lq, _ = x.shape
    q, k, v = attn.to_q(x), attn.to_k(context), attn.to_v(context)
    q, k, v = (t.reshape(n, -1, HEADS, DIM // HEADS).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) / (DIM // HEADS) ** 0.5
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, lq, DIM)
    return attn.to_out[0](out)


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=DIM, heads=HEADS, dim_head=DIM // HEADS).eval()


def test_one_key_cross_attention_is_the_projected_value(attn):
    x, context = torch.randn(3, 10, DIM), torch.randn(3, 1, DIM)
    got = CrossAttnProcessor()(attn, x, encoder_hidden_states=context)
    torch.testing.assert_close(got, official_attention(attn, x, context))
    # More than one key still attends.
    context2 = torch.randn(3, 2, DIM)
    got2 = CrossAttnProcessor()(attn, x, encoder_hidden_states=context2)
    torch.testing.assert_close(got2, official_attention(attn, x, context2))


@pytest.mark.parametrize("bank_rows", [1, 2])
def test_bank_projected_once_equals_attending_to_the_spread_bank(attn, bank_rows):
    frames, tokens = 3, 5
    x = torch.randn(2 * frames, tokens, DIM)  # (B·F, L, C), B = 2
    bank = torch.randn(bank_rows, tokens, DIM)
    spread = bank.expand(2 * frames, -1, -1) if bank_rows == 1 else repeat_per_frame(bank, frames)
    processor = SelfAttnProcessor("block")

    def read(**kw) -> torch.Tensor:  # noqa: ANN003
        ref = ReferenceRead({"block": bank.to(torch.float16)}, frames=frames, **kw)
        return processor(attn, x, reference=ref)

    spread = spread.to(torch.float16).float()
    with_bank = official_attention(attn, x, torch.cat([x, spread], 1))
    without = official_attention(attn, x, x)
    torch.testing.assert_close(read(), with_bank)
    # The unconditional rows (first sample's frames) attend without the bank, both ways.
    want = torch.cat([without[:frames], with_bank[frames:]])
    torch.testing.assert_close(read(uncond_rows=frames), want)
    torch.testing.assert_close(read(keep=torch.tensor([False, True])), want)


def test_temporal_attention_equals_the_unfolded_official_form():
    torch.manual_seed(0)
    attn = TemporalAttention(DIM, HEADS, max_len=24).eval()
    batch, frames, hw = 2, 6, 7
    hidden = torch.randn(batch * frames, hw, DIM)  # (B·F, HW, C)
    # Official: unfold to (B·HW, F, C), add positions, diffusers' processor, fold back.
    x = hidden.reshape(batch, frames, hw, DIM).transpose(1, 2).reshape(batch * hw, frames, DIM)
    x = x + attn.pos_encoder.pe[:, :frames]
    out = AttnProcessor2_0()(attn, x)
    want = out.reshape(batch, hw, frames, DIM).transpose(1, 2).reshape(batch * frames, hw, DIM)
    torch.testing.assert_close(attn(hidden, frames), want)
    assert F.mse_loss(attn(hidden, frames), hidden) > 0  # not a no-op
