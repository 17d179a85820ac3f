"""The space our trained SMGA models denoise in: motion relative to the reference pose.

In the official normalisation (v/500 − 0.6) a speaking mouth moves by ~0.01–0.02, a hundredth of
the unit-variance noise, so a small model learns to predict the reference pose and little else.
Our CPU models therefore work in a *residual* space: (pose − reference) divided by the face width
(so avatars of any size look alike) and by a per-channel standard deviation measured on the
training data (so the lips, the head and the hands all have unit scale). Official checkpoints
keep the official space (no ``pose_std``).
"""

from __future__ import annotations

import numpy as np

from mmgt.keypoints import layout

STD_FLOOR = 1e-3  # channels that never move (scores, hidden points) keep a finite scale
_JAW_L, _JAW_R = layout.face_index(0), layout.face_index(16)


def face_scale(reference: np.ndarray) -> np.ndarray:
    """(…,) face width of official-normalised reference poses (…, 402), in normalised units."""
    ref = np.asarray(reference, np.float64)
    left = ref[..., 3 * _JAW_L : 3 * _JAW_L + 2]
    right = ref[..., 3 * _JAW_R : 3 * _JAW_R + 2]
    return np.maximum(np.linalg.norm(right - left, axis=-1), 1e-3)


def to_residual(poses: np.ndarray, reference: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(…, T, 402) official poses → residual space, given (…, 402) references and (402,) std."""
    scale = face_scale(reference)[..., None, None]
    return ((poses - reference[..., None, :]) / scale / std).astype(np.float32)


def from_residual(x: np.ndarray, reference: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_residual`."""
    scale = face_scale(reference)[..., None, None]
    return (reference[..., None, :] + x * std * scale).astype(np.float32)


def residual_std(poses: list[np.ndarray], references: list[np.ndarray]) -> np.ndarray:
    """(402,) per-channel std of (pose − reference) / face width over clips."""
    parts = [(p - r[None, :]) / face_scale(r) for p, r in zip(poses, references, strict=True)]
    std = np.concatenate(parts).std(0)
    return np.maximum(std, STD_FLOOR).astype(np.float32)
