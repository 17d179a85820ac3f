"""Motion masks (the paper's Algorithm 1), frame by frame or for a whole clip.

Raw masks, (S, S) uint8 per frame, reproduce the official ``DWposeDetector_movment_mask``
(fixtures README G.2):

* A box spans the points with score ≥ 0.3 (hidden iff < 0.3) whose truncated coordinates satisfy
  ``int(x) > 0 and int(y) > 0``. It fills rows ``min_y … max_y − 1`` and columns
  ``min_x … max_x − 1`` (**the maximum is exclusive**) and exists only if min < max on both axes.
* ``face``: box of the 68 face points (24–91). ``lips``: box of 72–91. ``hands``: one box per
  hand, set by assignment (overlaps stay 255). ``face_hands``: the official "face" video, face box
  canvas + hands canvas added as uint8, so face/hand overlaps **wrap to 254**.
  ``background`` = 255 − face_hands (so 1 on those overlaps).
* ``body`` is not in the official code; it is the paper's limb mask plus the torso: the union
  of the torso box (between the shoulders, from the shoulder line down to the lowest visible hip,
  or to the frame bottom when no hip is visible; needs both shoulders) and the boxes around the
  :data:`~mmgt.keypoints.layout.LIMB_SEGMENTS` (shoulder line, upper arms,
  forearms) whose two endpoints have score > 0.3 (the body rule). Coordinates are clamped to
  [−2S, 2S] and truncated; a box spans ``[min − m, max + m]`` inclusive, clipped to the frame,
  with ``m = max(4, int(0.12 · shoulder width))`` px (capped at S), or m = 4 if a shoulder is
  hidden.

Non-finite points count as hidden. Legs play no part. S must be a multiple of 64.

Post-processing (README G.3), per name: ``cv2.resize`` to (S/8)² INTER_LINEAR →
``cv2.GaussianBlur((k, k), 0)`` → ``cv2.normalize`` NORM_MINMAX 0..255 uint8 (empty or constant
images come out all zero) → levels S/8 … S/64 via PIL BILINEAR, ``/ 255`` float32. The official
images have R=G=B, so one channel and no "L" conversion give the same bits. k = 31 for face,
face_hands and limbs, 21 for lips and hands (official: face 31, lips 21, hands 21 in training);
for S ≠ 512 k is scaled by S/512 and taken to the nearest odd number ≥ 3 (ties up). The
``background`` pyramid is 1 − face_hands pyramid: the official ``1 − face`` list that audio2vid
computes and discards; it is not blurred separately.

Speed: the resize, blur and pyramid are exact integer fixed-point filters in OpenCV and Pillow, so
they are reproduced with small matrix products (batched, and the tests check them bitwise against
cv2/PIL). The 8× INTER_LINEAR reduction reads only pixels 8i+3 and 8i+4 of each axis ("taps"), so
without ``keep_raw`` masks are rasterised straight at those (S/4)² taps.

:class:`MotionMaskStream` is the O(1)-per-frame path (slice assignment); :func:`motion_masks_clip`
is an independent whole-clip path (broadcast comparisons over all frames). They share only the
post-processing (:func:`postprocess`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mmgt.keypoints import layout
from mmgt.mask_filters import complement, postprocess, sample_taps, tap_positions
from mmgt.types import MASK_NAMES, KeypointSeq, MaskSet

BLUR_KERNELS_512 = {"face": 31, "face_hands": 31, "body": 31, "lips": 21, "hands": 21}
LIMB_MARGIN_FACTOR = 0.12  # limb box margin, × shoulder width
LIMB_MARGIN_MIN = 4  # px
_THR = layout.VISIBILITY_THRESHOLD
_HANDS = (layout.LEFT_HAND, layout.RIGHT_HAND)

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; x1, y1 exclusive


def blur_kernel(name: str, frame_size: int = 512) -> int:
    """Gaussian kernel size for ``name``: the 512 value × S/512, nearest odd ≥ 3."""
    k = BLUR_KERNELS_512[name] * frame_size / layout.OFFICIAL_FRAME
    return max(3, 2 * int(k // 2) + 1)


def _check(frame_size: int, names: Sequence[str]) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """Validate; return size, names and the raw masks to build (face_hands for background)."""
    if frame_size <= 0 or frame_size % 64:
        raise ValueError(f"frame_size must be a positive multiple of 64, got {frame_size}")
    bad = [n for n in names if n not in MASK_NAMES]
    if bad:
        raise ValueError(f"unknown mask names {bad}; known: {MASK_NAMES}")
    need = [n for n in names if n != "background"]
    if "background" in names and "face_hands" not in need:
        need.append("face_hands")
    return int(frame_size), tuple(names), tuple(need)


# --- per-frame path ---------------------------------------------------------------------------


def _point_box(pts: np.ndarray, idx: np.ndarray, size: int) -> Box | None:
    """Official box of ``pts[idx]`` (exclusive max), or None."""
    sel = pts[idx]  # (n, 3) float32, non-finite rows already hidden
    xy = np.trunc(np.clip(sel[:, :2], -1, size + 1)).astype(np.int64)  # (n, 2)
    xy = xy[(sel[:, 2] >= _THR) & (xy[:, 0] > 0) & (xy[:, 1] > 0)]
    if not len(xy):
        return None
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    return (int(x0), int(y0), int(x1), int(y1)) if x0 < x1 and y0 < y1 else None


def _limb_boxes(pts: np.ndarray, size: int) -> list[Box]:
    """Boxes (exclusive max, inside the frame) around the visible arm/shoulder segments."""
    shown = pts[:, 2] > _THR  # (134,)
    xy = np.clip(pts[:, :2], -2 * size, 2 * size)  # (134, 2) float32
    margin = LIMB_MARGIN_MIN
    if shown[layout.R_SHOULDER] and shown[layout.L_SHOULDER]:
        d = xy[layout.R_SHOULDER].astype(np.float64) - xy[layout.L_SHOULDER].astype(np.float64)
        width = float(np.sqrt(d[0] * d[0] + d[1] * d[1]))
        margin = min(max(LIMB_MARGIN_MIN, int(LIMB_MARGIN_FACTOR * width)), size)
    ixy = np.trunc(xy).astype(np.int64).tolist()
    boxes = []
    for a, b in layout.LIMB_SEGMENTS:
        if shown[a] and shown[b]:
            (xa, ya), (xb, yb) = ixy[a], ixy[b]
            x0, y0 = max(min(xa, xb) - margin, 0), max(min(ya, yb) - margin, 0)
            x1, y1 = min(max(xa, xb) + margin + 1, size), min(max(ya, yb) + margin + 1, size)
            if x0 < x1 and y0 < y1:
                boxes.append((x0, y0, x1, y1))
    if shown[layout.R_SHOULDER] and shown[layout.L_SHOULDER]:
        (xr, yr), (xl, yl) = ixy[layout.R_SHOULDER], ixy[layout.L_SHOULDER]
        hips = [ixy[h][1] for h in (layout.R_HIP, layout.L_HIP) if shown[h]]
        bottom = max(hips) + 1 if hips else size
        x0, y0 = max(min(xr, xl) - margin, 0), max(min(yr, yl) - margin, 0)
        x1, y1 = min(max(xr, xl) + margin + 1, size), min(max(bottom, y0), size)
        if x0 < x1 and y0 < y1:
            boxes.append((x0, y0, x1, y1))
    return boxes


def mask_boxes(points: np.ndarray, frame_size: int = 512) -> dict[str, list[Box]]:
    """Boxes (x0, y0, x1, y1), exclusive max, behind the raw masks of one (134, 3) pixel pose.

    Keys: ``face``, ``lips``, ``hands`` (left then right; missing hands left out), ``body``.
    """
    pts = np.array(points, dtype=np.float32, copy=True)
    if pts.shape != (layout.NUM_KEYPOINTS, layout.NUM_CHANNELS):
        raise ValueError(f"expected (134, 3) keypoints, got {pts.shape}")
    pts[~np.isfinite(pts).all(axis=1)] = (-1.0, -1.0, 0.0)  # non-finite → hidden
    boxes = {
        n: _point_box(pts, idx, frame_size)
        for n, idx in (("face", layout.FACE), ("lips", layout.LIPS))
    }
    out = {n: [b] if b is not None else [] for n, b in boxes.items()}
    out["hands"] = [b for b in (_point_box(pts, h, frame_size) for h in _HANDS) if b is not None]
    out["body"] = _limb_boxes(pts, frame_size)
    return out


def _tap_bound(v: int) -> int:
    """Number of tap positions (8i + 3, 8i + 4) below pixel ``v`` ≥ 0."""
    return 2 * (v // 8) + min(max(v % 8 - 3, 0), 2)


def _paint(
    boxes: dict[str, list[Box]], need: Sequence[str], side: int, bound: Callable[[int], int]
) -> dict[str, np.ndarray]:
    """Rasterise the raw masks on a (side, side) canvas; ``bound`` maps pixel → canvas bound."""

    def canvas(bs: list[Box]) -> np.ndarray:
        c = np.zeros((side, side), dtype=np.uint8)
        for x0, y0, x1, y1 in bs:
            c[bound(y0) : bound(y1), bound(x0) : bound(x1)] = 255
        return c

    raw = {n: canvas(boxes[n]) for n in ("face", "lips", "hands", "body") if n in need}
    if "face_hands" in need:
        fh = raw["hands"].copy() if "hands" in raw else canvas(boxes["hands"])
        for x0, y0, x1, y1 in boxes["face"]:
            fh[bound(y0) : bound(y1), bound(x0) : bound(x1)] += np.uint8(255)  # 255 + 255 → 254
        raw["face_hands"] = fh
    return raw


class MotionMaskStream:
    """Per-frame motion masks: ``push`` one pose, get that frame's :class:`MaskSet`.

    Stateless across frames (O(1) each). ``keep_raw`` also returns the full-size raw masks that
    :func:`mask_overlay` needs (slower: full-frame rasterisation).
    """

    def __init__(
        self, frame_size: int = 512, names: Sequence[str] = MASK_NAMES, keep_raw: bool = False
    ) -> None:
        self.frame_size, self.names, self._need = _check(frame_size, names)
        self.keep_raw = keep_raw
        self._kernels = [blur_kernel(n, self.frame_size) for n in self._need]

    def push(self, points: np.ndarray, frame_index: int) -> MaskSet:
        """Masks of one (134, 3) pixel pose at absolute ``frame_index``."""
        size, need = self.frame_size, self._need
        boxes = mask_boxes(points, size)
        if self.keep_raw:
            raw = _paint(boxes, need, size, lambda v: v)
            taps = sample_taps(np.stack([raw[n] for n in need]))  # (n, S/4, S/4)
            if "background" in self.names:
                raw["background"] = np.uint8(255) - raw["face_hands"]
        else:
            raw = _paint(boxes, need, size // 4, _tap_bound)
            taps = np.stack([raw[n] for n in need])
        pyramid = dict(zip(need, postprocess(taps, self._kernels), strict=True))
        if "background" in self.names:
            pyramid["background"] = complement(pyramid["face_hands"])
        return MaskSet(
            frame_index=int(frame_index),
            raw={n: raw[n] for n in self.names} if self.keep_raw else {},
            pyramid={n: pyramid[n] for n in self.names},
        )


# --- whole-clip path --------------------------------------------------------------------------


def _clip_fill(lo: np.ndarray, hi: np.ndarray, on: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Per-frame boxes [lo, hi) (T, 2) in (x, y) pixels, where ``on``, sampled at pixel ``grid``
    positions on both axes → (T, G, G) bool."""
    cols = (grid >= lo[:, :1]) & (grid < hi[:, :1]) & on[:, None]  # (T, G)
    rows = (grid >= lo[:, 1:]) & (grid < hi[:, 1:])  # (T, G)
    return rows[:, :, None] & cols[:, None, :]


def _clip_point_boxes(pts: np.ndarray, idx: np.ndarray, size: int, grid: np.ndarray) -> np.ndarray:
    """(T, 134, 3) → (T, G, G) bool official boxes of ``pts[:, idx]``, all frames at once."""
    sel = pts[:, idx]  # (T, n, 3)
    finite = np.isfinite(sel).all(axis=2)  # (T, n)
    xy = np.clip(np.where(finite[..., None], sel[..., :2], -1), -1, size + 1)
    ixy = np.trunc(xy).astype(np.int64)  # (T, n, 2)
    ok = finite & (sel[..., 2] >= _THR) & (ixy[..., 0] > 0) & (ixy[..., 1] > 0)
    lo = np.where(ok[..., None], ixy, size + 2).min(axis=1)  # (T, 2)
    hi = np.where(ok[..., None], ixy, -1).max(axis=1)  # (T, 2)
    return _clip_fill(lo, hi, (lo < hi).all(axis=1), grid)


def _clip_limbs(pts: np.ndarray, size: int, grid: np.ndarray) -> np.ndarray:
    """(T, 134, 3) → (T, G, G) bool union of the limb-segment boxes."""
    finite = np.isfinite(pts).all(axis=2)  # (T, 134)
    shown = finite & (np.where(finite, pts[..., 2], 0) > _THR)
    xy = np.clip(np.where(finite[..., None], pts[..., :2], 0), -2 * size, 2 * size)
    d = xy[:, layout.R_SHOULDER].astype(np.float64) - xy[:, layout.L_SHOULDER].astype(np.float64)
    width = np.sqrt(d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1])  # (T,)
    margin = np.maximum(LIMB_MARGIN_MIN, (LIMB_MARGIN_FACTOR * width).astype(np.int64))
    both = shown[:, layout.R_SHOULDER] & shown[:, layout.L_SHOULDER]
    margin = np.where(both, np.minimum(margin, size), LIMB_MARGIN_MIN)[:, None]  # (T, 1)
    ixy = np.trunc(xy).astype(np.int64)  # (T, 134, 2)
    out = np.zeros((pts.shape[0], len(grid), len(grid)), dtype=bool)
    for a, b in layout.LIMB_SEGMENTS:
        lo = np.clip(np.minimum(ixy[:, a], ixy[:, b]) - margin, 0, size)  # (T, 2)
        hi = np.clip(np.maximum(ixy[:, a], ixy[:, b]) + margin + 1, 0, size)
        out |= _clip_fill(lo, hi, shown[:, a] & shown[:, b], grid)
    # Torso: between the shoulders, down to the lowest visible hip (or the frame bottom).
    rs, ls = ixy[:, layout.R_SHOULDER], ixy[:, layout.L_SHOULDER]  # (T, 2)
    hip_y = np.where(
        shown[:, [layout.R_HIP, layout.L_HIP]], ixy[:, [layout.R_HIP, layout.L_HIP], 1], -1
    )
    bottom = np.where(hip_y.max(axis=1) >= 0, hip_y.max(axis=1) + 1, size)  # (T,)
    lo = np.clip(np.minimum(rs, ls) - margin, 0, size)
    hi_x = np.clip(np.maximum(rs[:, 0], ls[:, 0]) + margin[:, 0] + 1, 0, size)
    hi = np.stack([hi_x, np.clip(np.maximum(bottom, lo[:, 1]), 0, size)], axis=1)
    out |= _clip_fill(lo, hi, both, grid)
    return out


def _clip_raw(pts: np.ndarray, size: int, need: Sequence[str], grid: np.ndarray) -> dict:
    """(T, 134, 3) float32 → name → (T, G, G) uint8 raw masks sampled at ``grid``."""
    u8 = np.uint8(255)
    face = _clip_point_boxes(pts, layout.FACE, size, grid) * u8
    hands = np.zeros_like(face)
    for h in _HANDS:
        hands[_clip_point_boxes(pts, h, size, grid)] = u8
    raw = {"face": face, "hands": hands, "face_hands": hands + face}  # uint8 add wraps to 254
    if "lips" in need:
        raw["lips"] = _clip_point_boxes(pts, layout.LIPS, size, grid) * u8
    if "body" in need:
        raw["body"] = _clip_limbs(pts, size, grid) * u8
    return raw


def motion_masks_clip(
    seq: KeypointSeq, names: Sequence[str] = MASK_NAMES, keep_raw: bool = False, *, chunk: int = 16
) -> list[MaskSet]:
    """Masks of every frame of ``seq``, vectorised over frames (``chunk`` frames at a time)."""
    size, names, need = _check(seq.frame_size, names)
    grid = np.arange(size) if keep_raw else tap_positions(size)
    kernels = [blur_kernel(n, size) for n in need]
    out: list[MaskSet] = []
    for start in range(0, len(seq), chunk):
        pts = seq.points[start : start + chunk]  # (t, 134, 3) float32
        t = pts.shape[0]
        raw = _clip_raw(pts, size, need, grid)
        taps = np.concatenate([raw[n] for n in need])  # (len(need)·t, G, G), name-major
        pyr = postprocess(sample_taps(taps) if keep_raw else taps, np.repeat(kernels, t))
        for i in range(t):
            pyramid = {n: pyr[j * t + i] for j, n in enumerate(need)}
            if "background" in names:
                pyramid["background"] = complement(pyramid["face_hands"])
            masks = {n: raw[n][i] for n in names if n != "background"} if keep_raw else {}
            if keep_raw and "background" in names:
                masks["background"] = np.uint8(255) - raw["face_hands"][i]
            out.append(MaskSet(seq.start_frame + start + i, masks, pyramid))
    return out


# --- debug overlay ----------------------------------------------------------------------------

OVERLAY_COLORS = {  # RGB tints, drawn in this order (later on top)
    "body": (0, 200, 0),
    "face_hands": (255, 200, 0),
    "face": (255, 200, 0),
    "hands": (0, 120, 255),
    "lips": (255, 0, 60),
}
OVERLAY_ALPHA = 0.45


def mask_overlay(image: np.ndarray, masks: MaskSet) -> np.ndarray:
    """Tint an (S, S, 3) uint8 frame with the raw face(+hands), limbs, hands and lips masks."""
    if not masks.raw:
        raise ValueError("mask_overlay needs raw masks: build them with keep_raw=True")
    layers = [n for n in OVERLAY_COLORS if n in masks.raw]
    if "face_hands" in layers and "face" in layers:
        layers.remove("face")
    if not layers:
        raise ValueError(f"no drawable masks among {sorted(masks.raw)}")
    out = np.asarray(image, dtype=np.float32).copy()  # (S, S, 3)
    for name in layers:
        sel = masks.raw[name] > 0  # (S, S)
        if sel.shape != out.shape[:2]:
            raise ValueError(f"mask {name} is {sel.shape}, image is {out.shape[:2]}")
        color = np.array(OVERLAY_COLORS[name], dtype=np.float32)
        out[sel] = out[sel] * (1 - OVERLAY_ALPHA) + color * OVERLAY_ALPHA
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
