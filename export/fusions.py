"""Runtime-specific graph choices made while a network is traced for ONNX export.

**Fused attention for ONNX Runtime.** The exporter writes ``scaled_dot_product_attention`` as
MatMul → Softmax → MatMul on the full score tensor. For spatial attention that tensor is large
(at 512² the UNet's first level attends 4096 queries to 8192 keys: 1.6 GB per frame at fp32),
and ONNX Runtime runs it op by op. Under :class:`FusedAttention`, attention over a static key
length of at least :data:`MIN_FUSED_KEYS` is written as one ``com.microsoft.MultiHeadAttention``
node, which ONNX Runtime's CPU and CUDA providers run as a fused kernel. Short attention (the
motion modules over the frames of a window, the audio and CLIP cross-attention) stays in plain
ONNX ops, which are faster there. TensorRT's parser does not take ``com.microsoft`` ops and fuses
the plain pattern itself, so the ``tensorrt`` export target does not use this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_FUSED_KEYS = 64


class FusedAttention(TorchFunctionMode):
    """Trace ``F.scaled_dot_product_attention`` (no mask, dropout or causal flag, default
    scale, a static key length ≥ :data:`MIN_FUSED_KEYS`) as ``com.microsoft.MultiHeadAttention``
    while ``torch.export`` traces; eager calls run unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        fuse = func is F.scaled_dot_product_attention and torch.compiler.is_exporting()
        if fuse and _fusable(args, kwargs):
            return _multi_head_attention(*args[:3])
        return func(*args, **kwargs)


def _fusable(args: tuple, kwargs: dict) -> bool:
    options = dict(zip(("attn_mask", "dropout_p", "is_causal"), args[3:], strict=False)) | kwargs
    plain = (
        options.get("attn_mask") is None
        and not options.get("dropout_p")
        and not options.get("is_causal")
        and options.get("scale") is None
        and not options.get("enable_gqa")
    )
    keys = args[1].shape[2] if args[1].ndim == 4 else None  # (B, H, Lk, D); symbolic if dynamic
    return plain and isinstance(keys, int) and keys >= MIN_FUSED_KEYS


def _multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B, H, Lq, D), (B, H, Lk, D), (B, H, Lk, D) → (B, H, Lq, D) via the fused op."""
    b, heads, lq, d = q.shape

    def pack(x: torch.Tensor) -> torch.Tensor:  # (B, H, L, D) → (B, L, H·D)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], heads * d)

    out = torch.onnx.ops.symbolic(
        "com.microsoft::MultiHeadAttention",
        (pack(q), pack(k), pack(v)),
        {"num_heads": int(heads)},
        dtype=q.dtype,
        shape=(b, lq, heads * d),
        version=1,
    )  # (B, Lq, H·D)
    return out.reshape(b, lq, heads, d).transpose(1, 2)
