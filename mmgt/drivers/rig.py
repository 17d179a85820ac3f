"""A keypoint rig: control curves (mouth, lids, head, arms, breath) → 134-point pose sequences.

Both the procedural driver (curves from audio features) and the synthetic corpus generator
(curves from phone timings and prosody) drive poses through this one rig, so the motion they
produce has the same geometry. Lengths are in face widths (jaw end to jaw end of the reference
pose) and the mouth opening in mouth widths, so the rig works for any avatar and frame size.

Deformations, applied to copies of the reference pose in this order:

1. **mouth** — the inner-lip gap becomes ``opening × mouth width``; the lower lip and the jaw
   carry ¾ of the change and the upper lip ¼, most in the middle of the mouth (weight
   sin(π·u)^0.6 across it); corners drop a little. ``spread`` widens (+) or narrows (−) the
   lips about the mouth centre; ``press`` thins the lips towards each other (bilabials);
2. **blink** — upper lids close onto the lower lids;
3. **head** — roll about a pivot between chin and neck, then a shift (face, nose, eyes, ears);
4. **body** — breathing lifts neck, shoulders and arms; ``lift_left``/``lift_right`` raise a
   wrist, its hand and (less) its elbow, scaled by how visible that arm is in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from mmgt.drivers.ambient import HEAD, face_width, head_pivot, move_lids, rotate_about
from mmgt.keypoints import layout

_F = layout.face_index
UPPER_LIP = _F(np.array([49, 50, 51, 52, 53, 61, 62, 63]))
LOWER_LIP = _F(np.array([55, 56, 57, 58, 59, 65, 66, 67]))
CORNERS = _F(np.array([48, 54, 60, 64]))
JAW_WEIGHTS = np.array([0.15, 0.35, 0.55, 0.75, 0.9, 1.0, 0.9, 0.75, 0.55, 0.35, 0.15])  # 3..13


@dataclass
class RigCurves:
    """Per-frame controls, each a (T,) float array (zeros = the reference pose, mouth aside).

    Attributes:
        opening: inner-lip gap in mouth widths (0 closed; ~0.15–0.35 in speech).
        spread: lip width change as a fraction (+0.1 spread, −0.1 rounded).
        press: 0..1 lips pressed together and thinned (p, b, m).
        blink: 0..1 lid closure.
        head_x, head_y: head shift in face widths (y down).
        head_roll: head roll in radians.
        lift_left, lift_right: wrist lift in face widths (the person's left / right).
        breath: chest lift in face widths.
    """

    opening: np.ndarray
    spread: np.ndarray
    press: np.ndarray
    blink: np.ndarray
    head_x: np.ndarray
    head_y: np.ndarray
    head_roll: np.ndarray
    lift_left: np.ndarray
    lift_right: np.ndarray
    breath: np.ndarray

    @classmethod
    def zeros(cls, frames: int) -> RigCurves:
        return cls(**{f.name: np.zeros(frames) for f in fields(cls)})

    def __len__(self) -> int:
        return len(self.opening)


def mouth_width(reference: np.ndarray) -> float:
    return float(np.linalg.norm(reference[_F(54), :2] - reference[_F(48), :2])) + 1e-3


def across_mouth(reference: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(len(idx),) weight of mouth points by where they sit across the reference's mouth:
    sin(π·u)^0.6, 0 at the corners and 1 in the middle."""
    u = np.clip((reference[idx, 0] - reference[_F(48), 0]) / mouth_width(reference), 0, 1)
    # sin(π) is −9e-8 in float32: clamp, or a point beyond the corner would give NaN.
    return np.maximum(np.sin(np.pi * u), 0) ** 0.6


def lower_jaw(poses: np.ndarray, reference: np.ndarray, pixels: float) -> None:
    """Move the lower lip and the jaw of (T, 134, ≥2) ``poses`` down by ``pixels`` in the
    middle of the mouth (up when negative), in place, as the rig's mouth opening does: the lower
    lip by its place across the mouth, the jaw by :data:`JAW_WEIGHTS`."""
    poses[:, LOWER_LIP, 1] += pixels * across_mouth(reference, LOWER_LIP)
    poses[:, _F(np.arange(3, 14)), 1] += pixels * JAW_WEIGHTS


def inner_gap(points: np.ndarray) -> float:
    """Mean inner-lip gap (pixels) of one pose."""
    up, low = _F(np.array([61, 62, 63])), _F(np.array([67, 66, 65]))
    return float(np.mean(points[low, 1] - points[up, 1]))


def arm_visibility(reference: np.ndarray, wrist: int, hand: np.ndarray) -> float:
    """1 for a visible hand, 0.35 for a visible wrist alone, 0 otherwise."""
    if (reference[hand, 2] >= layout.VISIBILITY_THRESHOLD).sum() >= 5:
        return 1.0
    return 0.35 if reference[wrist, 2] >= layout.VISIBILITY_THRESHOLD else 0.0


def pose_sequence(reference: np.ndarray, curves: RigCurves) -> np.ndarray:
    """(T, 134, 3) float32 poses: the reference deformed by the curves (scores unchanged)."""
    ref = np.asarray(reference, dtype=np.float32)
    t = len(curves)
    poses = np.repeat(ref[None], t, axis=0)
    face_w, mouth_w = face_width(ref), mouth_width(ref)

    # 1. Mouth. Δ = target gap − reference gap, scaled so the mean inner gap hits the target.
    def across(idx: np.ndarray) -> np.ndarray:
        return across_mouth(ref, idx)

    reach = 0.25 * across(_F(np.array([61, 62, 63]))).mean()
    reach += 0.75 * across(_F(np.array([65, 66, 67]))).mean()
    delta = (curves.opening * mouth_w - max(inner_gap(ref), 0.0)) / max(reach, 1e-3)  # (T,)

    poses[:, UPPER_LIP, 1] -= 0.25 * delta[:, None] * across(UPPER_LIP)
    poses[:, LOWER_LIP, 1] += 0.75 * delta[:, None] * across(LOWER_LIP)
    poses[:, CORNERS, 1] += 0.2 * delta[:, None]
    poses[:, _F(np.arange(3, 14)), 1] += 0.75 * delta[:, None] * JAW_WEIGHTS[None, :]
    if np.any(curves.press):  # thin the lips towards the mouth line
        mid = 0.5 * (poses[:, _F(62), 1] + poses[:, _F(66), 1])[:, None]  # (T, 1)
        outer = _F(np.array([49, 50, 51, 52, 53, 55, 56, 57, 58, 59]))
        poses[:, outer, 1] += 0.25 * curves.press[:, None] * (mid - poses[:, outer, 1])
    lips = layout.LIPS
    cx = ref[lips, 0].mean()
    scale = 1 + curves.spread - 0.04 * np.clip(delta / mouth_w, 0, None)
    poses[:, lips, 0] = cx + (poses[:, lips, 0] - cx) * scale[:, None]

    # 2. Blinks: upper lids onto the lower lids.
    move_lids(poses, ref, np.clip(curves.blink, 0, 1))

    # 3. Head: roll about a pivot between chin and neck, then shift.
    shift = face_w * np.stack([curves.head_x, curves.head_y], 1)[:, None, :]  # (T, 1, 2)
    rotate_about(poses, HEAD, head_pivot(ref), curves.head_roll, shift)

    # 4. Body: breathing, then wrist lifts for beat gestures.
    body = np.concatenate([[1, 2, 3, 4, 5, 6, 7], layout.HANDS])
    poses[:, body, 1] -= face_w * curves.breath[:, None]
    for lift, wrist, elbow, hand in (
        (curves.lift_left, layout.L_WRIST, layout.L_ELBOW, layout.LEFT_HAND),
        (curves.lift_right, layout.R_WRIST, layout.R_ELBOW, layout.RIGHT_HAND),
    ):
        dy = face_w * lift[:, None] * arm_visibility(ref, wrist, hand)
        poses[:, [wrist], 1] -= dy
        poses[:, [elbow], 1] -= 0.45 * dy
        poses[:, hand, 1] -= dy
    return poses
