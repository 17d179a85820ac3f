"""SMGA training losses (Algorithm 2, stage-1 part).

Each region's loss is L_rec + L_vel + L_acc: MSE of positions, of first differences (velocity)
and of second differences (acceleration) along time, each a per-sample mean then a batch mean.
``term_weights`` scales the three terms (1, 1, 1 in the paper and the official code); a larger
acceleration weight weighs rough motion more (8 smoothed the shipped recipe little:
docs/models.md).

* ``"official"`` — what the official code optimises: the three terms over all 402 channels,
  plus 3 × the three terms over the face channels (keypoints 24–91, scores included).
* ``"paper"`` — the paper's L_SMGA = λ_f·L_face + λ_b·L_body with λ_f = 3, λ_b = 1, the body
  being the complement of the face channels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmgt.keypoints import layout

FACE_SLICE = slice(3 * layout.FACE_START, 3 * (layout.FACE_START + 68))  # [72:276]


def _mse(a: Tensor, b: Tensor) -> Tensor:
    return ((a - b) ** 2).flatten(1).mean(1).mean()


def motion_terms(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(L_rec, L_vel, L_acc) for (B, T, F) sequences."""
    pv, tv = pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1]
    pa, ta = pv[:, 1:] - pv[:, :-1], tv[:, 1:] - tv[:, :-1]
    return _mse(pred, target), _mse(pv, tv), _mse(pa, ta)


def smga_loss(
    pred: Tensor,
    target: Tensor,
    *,
    mode: str = "paper",
    face_weight: float = 3.0,
    body_weight: float = 1.0,
    term_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its named terms for (B, T, 402) predicted and target x0."""

    def named(prefix: str, weight: float, values: tuple[Tensor, ...]) -> dict[str, Tensor]:
        parts = zip(("rec", "vel", "acc"), term_weights, values, strict=True)
        return {f"{prefix}{name}": weight * w * v for name, w, v in parts}

    face_terms = named(
        "face_", face_weight, motion_terms(pred[..., FACE_SLICE], target[..., FACE_SLICE])
    )
    if mode == "official":
        terms = named("", 1.0, motion_terms(pred, target)) | face_terms
    elif mode == "paper":
        keep = torch.ones(pred.shape[-1], dtype=torch.bool, device=pred.device)
        keep[FACE_SLICE] = False
        body = motion_terms(pred[..., keep], target[..., keep])
        terms = face_terms | named("body_", body_weight, body)
    else:
        raise ValueError(f"unknown loss mode {mode!r} (official | paper)")
    return sum(terms.values()), terms
