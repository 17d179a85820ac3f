"""Pose images: 134 keypoints → the official MMGT/DWPose skeleton drawing, bitwise.

Reproduces what the official ``draw_pose`` produced for stage 2 (fixtures README G.2):

* Body (0–17). For each of the 17 :data:`~mmgt.keypoints.layout.BODY_LIMBS` pairs (a, b) whose
  joints both have score > 0.3: ``cv2.ellipse2Poly((int(mean x), int(mean y)),
  (int(length / 2), 4), int(degrees(atan2(y_a − y_b, x_a − x_b))), 0, 360, 1)`` filled with
  ``cv2.fillConvexPoly`` in limb colour i; ``int()`` truncates toward zero (negative angles too).
  The official code then dims the whole canvas by 0.9 (floor). At that point the canvas holds
  only limbs, so drawing the limbs directly in pre-dimmed colours is bitwise the same and saves a
  full-frame float pass. Then every joint with score > 0.3 gets a filled r=4 circle in its
  undimmed colour.
* Hands (left, then right; float32 points): 20 edges ``cv2.line`` thickness 2 in the
  channel-reversed HSV palette, drawn only if all four integer endpoint coordinates are > 0; then
  every point with integer x, y > 0 gets a filled r=4 circle in (0, 0, 255).
* Face (24–91): every point with integer x, y > 0 gets a filled white r=3 circle.
* Visibility is asymmetric: a body joint is drawn iff score > 0.3, any other point is hidden iff
  score < 0.3 (a score of exactly 0.3 keeps a hand/face point). Feet (18–23) are never drawn.
* Knees and ankles are hidden by default (the official ``mask_leg`` applied by audio2vid).

The official renderer divides by 512 and multiplies by the canvas size; with keypoints given in
pixels of the canvas this is the identity, so points are used as they are. For ``frame_size``
other than 512 the drawing happens at that size with the **same** stick width (4) and radii
(4 body/hand, 3 face) — strokes do not scale with the frame. Non-finite points are hidden and
coordinates are clipped to ±2^20 px so OpenCV never sees out-of-range integers.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from mmgt.keypoints import layout
from mmgt.types import KeypointSeq

STICK_WIDTH = 4  # half-width (minor axis) of the body limb ellipses, px
BODY_RADIUS = 4
HAND_RADIUS = 4
FACE_RADIUS = 3
HAND_THICKNESS = 2
_COORD_LIMIT = float(2**20)

# Official OpenPose colours, stored RGB order, joint i / limb i.
BODY_COLORS = np.array(
    [
        [255, 0, 0],
        [255, 85, 0],
        [255, 170, 0],
        [255, 255, 0],
        [170, 255, 0],
        [85, 255, 0],
        [0, 255, 0],
        [0, 255, 85],
        [0, 255, 170],
        [0, 255, 255],
        [0, 170, 255],
        [0, 85, 255],
        [0, 0, 255],
        [85, 0, 255],
        [170, 0, 255],
        [255, 0, 255],
        [255, 0, 170],
        [255, 0, 85],
    ],
    dtype=np.uint8,
)
# Limb colours after the official ``(canvas * 0.9).astype(uint8)`` dimming (floor).
LIMB_COLORS = (BODY_COLORS[: len(layout.BODY_LIMBS)] * 0.9).astype(np.uint8)
# Hand edge e: hsv_to_rgb(e / 20, 1, 1) · 255, channels reversed, truncated to uint8.
HAND_EDGE_COLORS = np.array(
    [
        (np.array(colorsys.hsv_to_rgb(e / len(layout.HAND_EDGES), 1.0, 1.0)) * 255)[::-1]
        for e in range(len(layout.HAND_EDGES))
    ]
).astype(np.uint8)
HAND_POINT_COLOR = (0, 0, 255)
FACE_COLOR = (255, 255, 255)

# Python tuples for the cv2 calls (built once; cv2 wants plain ints).
_LIMB_COLORS = [tuple(int(c) for c in row) for row in LIMB_COLORS]
_BODY_COLORS = [tuple(int(c) for c in row) for row in BODY_COLORS]
_EDGE_COLORS = [tuple(int(c) for c in row) for row in HAND_EDGE_COLORS]
_LIMB_A = np.array([a for a, _ in layout.BODY_LIMBS])
_LIMB_B = np.array([b for _, b in layout.BODY_LIMBS])
_EDGE_A = np.array([a for a, _ in layout.HAND_EDGES])
_EDGE_B = np.array([b for _, b in layout.HAND_EDGES])
_BODY_IDX = layout.BODY
_HAND_IDX = (layout.LEFT_HAND, layout.RIGHT_HAND)
_FACE_IDX = layout.FACE


def _as_points(points: np.ndarray) -> np.ndarray:
    """(134, 3) float32 copy with non-finite points given score 0 and coordinates clipped."""
    pts = np.array(points, dtype=np.float32, copy=True)
    if pts.shape != (layout.NUM_KEYPOINTS, layout.NUM_CHANNELS):
        raise ValueError(f"expected (134, 3) keypoints, got {pts.shape}")
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        pts[bad] = (-1.0, -1.0, 0.0)
    np.clip(pts[:, :2], -_COORD_LIMIT, _COORD_LIMIT, out=pts[:, :2])
    return pts


def _draw_body(canvas: np.ndarray, pts: np.ndarray) -> None:
    """Limbs (pre-dimmed) and joints of the 18 OpenPose body points."""
    body = pts[_BODY_IDX]  # (18, 3) float32
    shown = body[:, 2] > layout.VISIBILITY_THRESHOLD  # (18,)
    xy = body[:, :2]
    a, b = xy[_LIMB_A], xy[_LIMB_B]  # (17, 2) each, float32 like the official candidate
    centre = (a + b) / np.float32(2)  # np.mean of the two joints, float32
    d = a - b
    half = np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2) / np.float32(2)  # (17,) float32
    limb_on = shown[_LIMB_A] & shown[_LIMB_B]
    for i in np.flatnonzero(limb_on):
        dy, dx = float(d[i, 1]), float(d[i, 0])
        angle = int(math.degrees(math.atan2(dy, dx)))
        poly = cv2.ellipse2Poly(
            (int(centre[i, 0]), int(centre[i, 1])), (int(half[i]), STICK_WIDTH), angle, 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, poly, _LIMB_COLORS[i])
    ixy = np.trunc(xy).astype(np.int64)  # (18, 2)
    for j in np.flatnonzero(shown):
        cv2.circle(canvas, (int(ixy[j, 0]), int(ixy[j, 1])), BODY_RADIUS, _BODY_COLORS[j], -1)


def _point_pixels(pts: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer pixels of hand/face points and the official "drawn" flag (score ≥ 0.3, x, y > 0)."""
    sel = pts[idx]  # (n, 3) float32
    ixy = np.trunc(sel[:, :2]).astype(np.int64)  # (n, 2), int() toward zero
    drawn = (sel[:, 2] >= layout.VISIBILITY_THRESHOLD) & (ixy[:, 0] > 0) & (ixy[:, 1] > 0)
    return ixy, drawn


def _draw_hands(canvas: np.ndarray, pts: np.ndarray) -> None:
    for idx in _HAND_IDX:
        ixy, drawn = _point_pixels(pts, idx)
        for e in np.flatnonzero(drawn[_EDGE_A] & drawn[_EDGE_B]):
            p, q = ixy[_EDGE_A[e]], ixy[_EDGE_B[e]]
            cv2.line(
                canvas,
                (int(p[0]), int(p[1])),
                (int(q[0]), int(q[1])),
                _EDGE_COLORS[e],
                thickness=HAND_THICKNESS,
            )
        for k in np.flatnonzero(drawn):
            cv2.circle(canvas, (int(ixy[k, 0]), int(ixy[k, 1])), HAND_RADIUS, HAND_POINT_COLOR, -1)


def _draw_face(canvas: np.ndarray, pts: np.ndarray) -> None:
    ixy, drawn = _point_pixels(pts, _FACE_IDX)
    for k in np.flatnonzero(drawn):
        cv2.circle(canvas, (int(ixy[k, 0]), int(ixy[k, 1])), FACE_RADIUS, FACE_COLOR, -1)


def render_pose(points: np.ndarray, frame_size: int = 512, *, legs: bool = False) -> np.ndarray:
    """Draw one (134, 3) pixel pose (x, y, score) → (S, S, 3) uint8 RGB, as the official renderer.

    ``legs=False`` applies the official leg masking (knees/ankles hidden) like audio2vid does.
    """
    pts = _as_points(points)
    if not legs:
        pts[layout.LEGS] = 0.0
    canvas = np.zeros((frame_size, frame_size, 3), dtype=np.uint8)
    _draw_body(canvas, pts)
    _draw_hands(canvas, pts)
    _draw_face(canvas, pts)
    return canvas


def render_pose_sequence(seq: KeypointSeq, *, legs: bool = False) -> np.ndarray:
    """Render every frame of ``seq`` → (T, S, S, 3) uint8 with S = ``seq.frame_size``."""
    size = seq.frame_size
    out = np.empty((len(seq), size, size, 3), dtype=np.uint8)
    for t in range(len(seq)):
        out[t] = render_pose(seq.points[t], size, legs=legs)
    return out
