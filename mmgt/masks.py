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

import functools
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from mmgt.keypoints import layout
from mmgt.types import MASK_NAMES, KeypointSeq, MaskSet

NUM_LEVELS = 4
BLUR_KERNELS_512 = {"face": 31, "face_hands": 31, "body": 31, "lips": 21, "hands": 21}
LIMB_MARGIN_FACTOR = 0.12  # limb box margin, × shoulder width
LIMB_MARGIN_MIN = 4  # px
_THR = layout.VISIBILITY_THRESHOLD
_HANDS = (layout.LEFT_HAND, layout.RIGHT_HAND)
_SMALL_GAUSSIANS = {  # OpenCV's fixed kernels for ksize ≤ 7 with sigma ≤ 0
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}

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


# --- exact post-processing (shared) -----------------------------------------------------------


@functools.lru_cache(maxsize=16)
def tap_positions(frame_size: int) -> np.ndarray:
    """(S/4,) pixel rows/cols that cv2's 8× INTER_LINEAR reduction reads: 8i + 3 and 8i + 4."""
    base = np.arange(0, frame_size, 8)
    taps = np.stack([base + 3, base + 4], axis=1).ravel()
    taps.setflags(write=False)
    return taps


def sample_taps(raw: np.ndarray) -> np.ndarray:
    """(…, S, S) → (…, S/4, S/4): the only pixels the (S/8)² resize depends on."""
    taps = tap_positions(raw.shape[-1])
    return raw[..., taps[:, None], taps[None, :]]


def _round_shift(acc: np.ndarray, bits: int) -> np.ndarray:
    """Fixed-point rounding ``(acc + 2^(bits−1)) >> bits`` of exact integer-valued floats."""
    return (acc.astype(np.int64) + (1 << (bits - 1))) >> bits


def _fixed_gaussian(kernel: int) -> np.ndarray:
    """(k,) int64: OpenCV's 8-bit-fraction Gaussian taps for uint8 blurs (sum 256).

    σ = 0.3·((k − 1)/2 − 1) + 0.8; normalised taps are rounded with error diffusion from the
    outside in, mirrored, and the centre takes the remainder.
    """
    if kernel in _SMALL_GAUSSIANS:
        return (np.array(_SMALL_GAUSSIANS[kernel]) * 256).astype(np.int64)
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel) - (kernel - 1) / 2
    taps = np.exp(-(x * x) / (2 * sigma * sigma))
    taps /= taps.sum()
    out = np.zeros(kernel, dtype=np.int64)
    err = 0.0
    for i in range(kernel // 2):
        adj = taps[i] * 256 + err
        out[i] = out[kernel - 1 - i] = int(np.rint(adj))
        err = adj - out[i]
    out[kernel // 2] = 256 - 2 * out[: kernel // 2].sum()
    return out


@functools.lru_cache(maxsize=32)
def _blur_matrix(side: int, kernel: int) -> np.ndarray:
    """(side, side) float64: 1-D fixed-point Gaussian with the reflect-101 border folded in."""
    taps = _fixed_gaussian(kernel)
    src = np.arange(side)[:, None] + np.arange(kernel)[None, :] - kernel // 2  # (side, k)
    period = max(2 * side - 2, 1)
    src = np.abs(src) % period
    src = np.where(src >= side, period - src, src)  # reflect-101: … 2 1 | 0 1 2 … n−1 | n−2 …
    mat = np.zeros((side, side), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(side), kernel), src.ravel()), np.tile(taps, side))
    return mat


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(out, in) float64: Pillow's 8-bit BILINEAR (antialiased) taps, 22 fraction bits."""
    scale = size_in / size_out
    support = max(scale, 1.0)  # bilinear support 1 × filter scale
    inv = 1.0 / support
    mat = np.zeros((size_out, size_in), dtype=np.float64)
    for xx in range(size_out):
        center = (xx + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        w = [max(0.0, 1.0 - abs((x - center + 0.5) * inv)) for x in range(lo, hi)]
        total = sum(w)
        for x, wx in zip(range(lo, hi), w, strict=True):
            mat[xx, x] = int(0.5 + wx / total * (1 << 22)) if total else 0
    return mat


def gaussian_blur_u8(images: np.ndarray, kernel: int) -> np.ndarray:
    """Bit-exact ``cv2.GaussianBlur(img, (k, k), 0)`` of uint8 (…, s, s) images, batched.

    OpenCV blurs 8-bit images in exact fixed point (8-bit taps, rows then columns, one rounding
    ``>> 16`` at the end); all sums stay below 2^24, exact in float64.
    """
    mat = _blur_matrix(images.shape[-1], kernel)
    acc = mat @ (images.astype(np.float64) @ mat.T)  # (…, s, s)
    return _round_shift(acc, 16).astype(np.uint8)


def blur_masks(
    taps: np.ndarray, kernels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Official ``blur_mask`` of (n, S/4, S/4) tap images → resized, blurred, min-max (n, S/8²).

    The 8× INTER_LINEAR resize is the rounded mean of each 2×2 tap block (cv2's fixed point).
    """
    t = taps.astype(np.uint16)
    quad = t[:, 0::2, 0::2] + t[:, 0::2, 1::2] + t[:, 1::2, 0::2] + t[:, 1::2, 1::2]
    resized = ((quad + 2) >> 2).astype(np.uint8)  # (n, s, s)
    blurred = np.zeros_like(resized)
    stretched = np.zeros_like(resized)
    live = resized.reshape(len(resized), -1).any(axis=1)  # empty masks stay all zero
    kernels = np.asarray(kernels)
    for k in np.unique(kernels[live]):
        sel = np.flatnonzero(live & (kernels == k))
        blurred[sel] = gaussian_blur_u8(resized[sel], int(k))
    for i in np.flatnonzero(live):
        stretched[i] = cv2.normalize(blurred[i], None, 0, 255, cv2.NORM_MINMAX)
    return resized, blurred, stretched


def pyramid_levels(gray: np.ndarray) -> tuple[np.ndarray, ...]:
    """(n, s, s) uint8 → NUM_LEVELS float32 arrays (n, s·2^-l, s·2^-l): PIL BILINEAR, / 255."""
    side = gray.shape[-1]
    scale = np.float32(255)
    levels = [gray.astype(np.float32) / scale]  # level 0: same-size PIL resize is a copy
    g = gray.astype(np.float64)
    for lvl in range(1, NUM_LEVELS):
        mat = _bilinear_matrix(side, side >> lvl)
        rows = _round_shift(g @ mat.T, 22)  # horizontal pass, uint8 range
        out = _round_shift(mat @ rows, 22)  # (n, s_l, s_l)
        levels.append(np.clip(out, 0, 255).astype(np.float32) / scale)
    return tuple(levels)


def postprocess(taps: np.ndarray, kernels: Sequence[int]) -> list[tuple[np.ndarray, ...]]:
    """(n, S/4, S/4) tap images → n pyramids (tuples of NUM_LEVELS float32 (s_l, s_l))."""
    levels = pyramid_levels(blur_masks(taps, kernels)[2])
    return [tuple(lv[i] for lv in levels) for i in range(taps.shape[0])]


def mask_pyramid(raw: np.ndarray, kernel: int) -> tuple[np.ndarray, ...]:
    """Official post-processing of one full (S, S) uint8 mask → NUM_LEVELS float32 levels."""
    return postprocess(sample_taps(raw)[None], [kernel])[0]


def _complement(levels: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.float32(1) - lv for lv in levels)


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
            pyramid["background"] = _complement(pyramid["face_hands"])
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
                pyramid["background"] = _complement(pyramid["face_hands"])
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
