"""SMGA training losses (Algorithm 2, stage-1 part).

Each region's loss is L_rec + L_vel + L_acc: MSE of positions, of first differences (velocity)
and of second differences (acceleration) along time, each a per-sample mean then a batch mean.

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
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss and its named terms for (B, T, 402) predicted and target x0."""
    names = ("rec", "vel", "acc")
    face = motion_terms(pred[..., FACE_SLICE], target[..., FACE_SLICE])
    face_terms = {f"face_{k}": face_weight * v for k, v in zip(names, face, strict=True)}
    if mode == "official":
        full = motion_terms(pred, target)
        terms = dict(zip(names, full, strict=True)) | face_terms
    elif mode == "paper":
        keep = torch.ones(pred.shape[-1], dtype=torch.bool, device=pred.device)
        keep[FACE_SLICE] = False
        body = motion_terms(pred[..., keep], target[..., keep])
        body_terms = {f"body_{k}": body_weight * v for k, v in zip(names, body, strict=True)}
        terms = face_terms | body_terms
    else:
        raise ValueError(f"unknown loss mode {mode!r} (official | paper)")
    return sum(terms.values()), terms
