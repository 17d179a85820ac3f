"""Runtime-specific graph choices made while a network is traced for ONNX export.

Under :class:`OrtRewrites` (the ``onnxruntime`` export target) three patterns are traced in the
form ONNX Runtime's CPU and CUDA providers run fastest; eager calls are left alone, and every
rewrite computes the same function (the parity checks of ``export.onnx`` compare with torch).

* **Fused attention.** The exporter writes ``scaled_dot_product_attention`` as MatMul → Softmax
  → MatMul on the full score tensor. For spatial attention that tensor is large (at 512² the
  UNet's first level attends 4096 queries to 8192 keys: 1.6 GB per frame at fp32), and ONNX
  Runtime runs it op by op. Attention over a static key length of at least
  :data:`MIN_FUSED_KEYS` becomes one ``com.microsoft.MultiHeadAttention`` node, a fused kernel.
  Short attention (the motion modules over the frames of a window, the audio cross-attention)
  stays in plain ops, which are as fast there.
* **Linear layers on 3-D inputs** are written as a 2-D ``Gemm`` with its bias (the exporter's
  MatMul + Add runs the bias as a separate pass over the output).
* **GEGLU**: a linear layer whose output is split in halves along its last axis (diffusers'
  ``GEGLU``: value and gate) becomes two linear layers on the weight halves, with no Split copy.

TensorRT's parser does not take ``com.microsoft`` ops and fuses the plain patterns itself, so
the ``tensorrt`` export target uses none of this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MIN_FUSED_KEYS = 64


class OrtRewrites(TorchFunctionMode):
    """Trace the patterns above in ONNX Runtime's preferred form while ``torch.export`` traces."""

    def __init__(self) -> None:
        super().__init__()
        # id of a rewritten linear layer's output → (output, input, weight, bias) while the
        # trace runs; holding the output keeps its id from being reused.
        self._linears: dict[int, tuple[torch.Tensor, ...]] = {}

    def __exit__(self, *exc: object) -> None:
        self._linears.clear()
        super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        kwargs = kwargs or {}
        if not torch.compiler.is_exporting():
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention and _fusable(args, kwargs):
            return _multi_head_attention(*args[:3])
        if func is F.linear and len(args) == 3 and not kwargs and args[0].ndim >= 3:
            x, weight, bias = args
            out = _linear_2d(x, weight, bias)
            self._linears[id(out)] = (out, x, weight, bias)
            return out
        if func is torch.Tensor.chunk and _halves_of_last_dim(args, kwargs):
            source = self._linears.get(id(args[0]))
            if source is not None and source[0] is args[0]:
                _, x, weight, bias = source
                half = weight.shape[0] // 2
                halves = (slice(0, half), slice(half, None))
                return tuple(
                    _linear_2d(x, weight[s], None if bias is None else bias[s]) for s in halves
                )
        return func(*args, **kwargs)


def _linear_2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on (…, in) as one 2-D matrix product with the bias: (…, out)."""
    flat = x.reshape(-1, x.shape[-1])  # (M, in)
    out = flat @ weight.t() if bias is None else torch.addmm(bias, flat, weight.t())
    return out.reshape(*x.shape[:-1], weight.shape[0])


def _halves_of_last_dim(args: tuple, kwargs: dict) -> bool:
    options = dict(zip(("chunks", "dim"), args[1:], strict=False)) | kwargs
    return options.get("chunks") == 2 and options.get("dim", 0) in (-1, args[0].ndim - 1)


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
