"""The space our trained SMGA models denoise in: motion relative to the reference pose.

In the official normalisation (v/500 − 0.6) a speaking mouth moves by ~0.01–0.02, a hundredth of
the unit-variance noise, so a small model learns to predict the reference pose and little else.
Our CPU models therefore work in a *residual* space: (pose − reference) divided by the face width
(so avatars of any size look alike) and by a per-channel standard deviation measured on the
training data (so the lips, the head and the hands all have unit scale). Official checkpoints
keep the official space (no ``pose_std``).

The motion is measured from an *anchor*: the reference itself (``reference``, the shipped model),
or the reference with its mouth closed as the rig closes it (``closed-mouth``), which is what
the corpus shows in silence. With the reference as anchor, silence is "no change" for a
closed-mouth photo but "close by the photo's own gap" for a smiling one; a small model averages
the two and closes every mouth by about the same amount (the closed-mouth bias that
:mod:`mmgt.drivers.lip_bias` measures and takes off). With the closed mouth as anchor, silence is
"no change" for every photo. The anchor a model was trained with is stored in its weights
(``residual_anchor``).
"""

from __future__ import annotations

import numpy as np

from mmgt.drivers import rig
from mmgt.keypoints import layout

ANCHORS = ("reference", "closed-mouth")
STD_FLOOR = 1e-3  # channels that never move (scores, hidden points) keep a finite scale
_JAW_L, _JAW_R = layout.face_index(0), layout.face_index(16)


def face_scale(reference: np.ndarray) -> np.ndarray:
    """(…,) face width of official-normalised reference poses (…, 402), in normalised units."""
    ref = np.asarray(reference, np.float64)
    left = ref[..., 3 * _JAW_L : 3 * _JAW_L + 2]
    right = ref[..., 3 * _JAW_R : 3 * _JAW_R + 2]
    return np.maximum(np.linalg.norm(right - left, axis=-1), 1e-3)


def closed_mouth(reference: np.ndarray) -> np.ndarray:
    """(…, 402) official-normalised references with their mouths closed as the rig closes one
    (lips together, jaw raised; :func:`mmgt.drivers.rig.pose_sequence` at opening 0); every
    other channel is the reference's own, bit for bit."""
    ref = np.asarray(reference, np.float32)
    flat = ref.reshape(-1, ref.shape[-1])
    out = flat.copy()
    for i, r in enumerate(flat):
        pixels = layout.denormalize(r).reshape(layout.NUM_KEYPOINTS, layout.NUM_CHANNELS)
        closed = layout.normalize(rig.pose_sequence(pixels, rig.RigCurves.zeros(1))[0])
        out[i, MOUTH_XY] = closed[MOUTH_XY]
    return out.reshape(ref.shape)


def _mouth_xy() -> np.ndarray:
    """(402,) bool: the x, y channels of the lips and of the jaw line the rig raises."""
    moved = np.zeros(layout.NUM_KEYPOINTS, bool)
    moved[layout.LIPS] = True
    moved[layout.face_index(np.arange(3, 14))] = True
    xy = np.arange(layout.OFFICIAL_DIM) % layout.NUM_CHANNELS < 2
    return np.repeat(moved, layout.NUM_CHANNELS) & xy


MOUTH_XY = _mouth_xy()


def anchor_of(reference: np.ndarray, anchor: str | np.ndarray = "reference") -> np.ndarray:
    """The (…, 402) poses motion is measured from (module docstring); an array ``anchor`` is
    such poses already computed (callers that reuse one reference keep them)."""
    if isinstance(anchor, np.ndarray):
        return anchor
    if anchor == "reference":
        return np.asarray(reference)
    if anchor == "closed-mouth":
        return closed_mouth(reference)
    raise ValueError(f"unknown residual anchor {anchor!r}; choose one of {', '.join(ANCHORS)}")


def to_residual(
    poses: np.ndarray,
    reference: np.ndarray,
    std: np.ndarray,
    anchor: str | np.ndarray = "reference",
) -> np.ndarray:
    """(…, T, 402) official poses → residual space, given (…, 402) references and (402,) std."""
    scale = face_scale(reference)[..., None, None]
    return ((poses - anchor_of(reference, anchor)[..., None, :]) / scale / std).astype(np.float32)


def from_residual(
    x: np.ndarray, reference: np.ndarray, std: np.ndarray, anchor: str | np.ndarray = "reference"
) -> np.ndarray:
    """Inverse of :func:`to_residual`."""
    scale = face_scale(reference)[..., None, None]
    return (anchor_of(reference, anchor)[..., None, :] + x * std * scale).astype(np.float32)


def residual_std(
    poses: list[np.ndarray], references: list[np.ndarray], anchor: str = "reference"
) -> np.ndarray:
    """(402,) per-channel std of (pose − anchor) / face width over clips."""
    parts = [
        (p - anchor_of(r, anchor)[None, :]) / face_scale(r)
        for p, r in zip(poses, references, strict=True)
    ]
    std = np.concatenate(parts).std(0)
    return np.maximum(std, STD_FLOOR).astype(np.float32)
