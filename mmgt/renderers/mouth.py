"""The warp renderer's mouth: what a warp of the reference photo cannot show when it opens.

* **Lower lip shape.** Three lower-lip landmarks make a V; an open mouth's lower edge is round.
  The target's inner lower lip is pushed towards the elliptical arc through the corners and its
  deepest point, and the outer lower lip moves with it, so the lip keeps its thickness. This is
  done to the pose before warping, so the warped lip and the painted opening share one outline.
* **Teeth from the photo.** When the reference shows its teeth, the upper teeth move with the
  upper lip and the rest of the visible interior (lower teeth, or the upper teeth's tips) with
  the lower lip, each keeping its height; the dark cavity opens between them, as in a real
  mouth. A warp alone would stretch the teeth instead.
* **Painted interior.** When the reference's mouth is closed, the inside is painted: a cavity
  shaded deeper towards the back, a band of upper teeth under the upper lip and, for wide
  openings, the tongue. It fades in as the opening grows.

* **Turned faces.** In a face turned away, the far mouth corner's landmarks lie on or past the
  silhouette, so the opening would be painted over the background there. The photo's edge
  along the mouth line is found once, and the interior stops at it.
* **Greyscale photos** get grey paint.

Everything is drawn with anti-aliased coverage inside a small region of interest.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mmgt.keypoints import layout
from mmgt.renderers import warp_field
from mmgt.renderers.raster import catmull_rom, fill_coverage, roi_box

UPPER = layout.face_index(np.array([60, 61, 62, 63, 64]))  # inner upper lip, right → left corner
LOWER = layout.face_index(np.array([60, 67, 66, 65, 64]))  # inner lower lip, same direction
OUTER_LOWER = layout.face_index(np.array([48, 59, 58, 57, 56, 55, 54]))  # outer lower lip
EYE_CORNERS = layout.face_index(np.array([36, 45]))  # outer eye corners: the head's scale
UPPER_TEETH_SHARE = 0.8  # of the photo's visible interior moving with the upper lip (default)
TEETH_MIN_GAP = 0.08  # reference gap over mouth width above which the photo shows its teeth
ROUNDING_PULL = 0.7
FRONT_STEP = 40.0  # RGB distance over 2 px along the mouth line that marks the face's edge
GREY_SPREAD = 8.0  # channel spread (99th percentile) under which the photo is greyscale
_NEEDED = np.concatenate([layout.LIPS, EYE_CORNERS])  # points opening() reads


def _strips(a: list[int], b: list[int]) -> list[tuple[int, int, int]]:
    """Triangles between two rows of vertices that share their end points (the corners)."""
    n = len(a)
    tris = [(a[0], a[1], b[1])]
    for i in range(1, n - 2):
        tris += [(a[i], a[i + 1], b[i]), (b[i], a[i + 1], b[i + 1])]
    return [*tris, (a[n - 2], a[n - 1], b[n - 2])]


# Interior mesh: four rows of 7 vertices sharing the corners 0 and 6: upper lip (0–6), upper
# teeth edge (7–11), lower teeth edge (12–16), lower lip (17–21). Three bands: upper teeth,
# cavity, lower teeth.
_ROWS = (
    [0, 1, 2, 3, 4, 5, 6],
    [0, 7, 8, 9, 10, 11, 6],
    [0, 12, 13, 14, 15, 16, 6],
    [0, 17, 18, 19, 20, 21, 6],
)
_TRIANGLES = np.array(
    [t for a, b in zip(_ROWS[:-1], _ROWS[1:], strict=True) for t in _strips(a, b)], np.int32
)


@dataclass(frozen=True)
class MouthStyle:
    """Colours sampled once from the reference photo."""

    cavity: np.ndarray  # (3,) float32 RGB of the darkest part of the mouth
    teeth: np.ndarray  # (3,) float32 RGB
    lip_line: np.ndarray  # (3,) float32 RGB, a dark lip colour for the closed-lid lash line
    tongue: np.ndarray  # (3,) float32 RGB


@dataclass(frozen=True)
class MouthReference:
    """Per-avatar mouth state: the photo, its inner lips and colours."""

    image: np.ndarray  # (S, S, 3) uint8 reference photo; the teeth are read from it
    upper: np.ndarray  # (7, 2) inner upper lip, right → left corner (see :func:`lip_row`)
    lower: np.ndarray  # (7, 2) inner lower lip, same direction
    gap: float  # inner-lip opening in pixels
    eye_span: float  # outer eye corner distance: the head's scale
    shows_teeth: bool
    upper_share: float  # of the visible interior that moves with the upper lip
    style: MouthStyle
    far_end: int = -1  # the row end (0 or -1) of the corner turned away from the camera
    front: float | None = None  # where the face's edge crosses the mouth line, as a share of
    # the way from the near corner to the far one (None: not turned, or no edge before it)


def prepare_mouth(
    image: np.ndarray, pose: np.ndarray, far_end: int | None = None
) -> MouthReference:
    """Mouth state of a reference photo and its (134, 3) pose; ``far_end`` (0 or -1, the end
    of the lip rows turned away from the camera) for a turned face, None for a frontal one."""
    upper, lower = lip_row(pose, UPPER), lip_row(pose, LOWER)
    gap = mouth_gap(pose)
    width = float(np.linalg.norm(upper[-1] - upper[0]))
    front = None if far_end is None else front_edge(image, upper[-1 - far_end], upper[far_end])
    return MouthReference(
        image=image,
        upper=upper,
        lower=lower,
        gap=gap,
        eye_span=_eye_span(pose),
        shows_teeth=gap > max(2.0, TEETH_MIN_GAP * width),
        upper_share=teeth_split(image, upper, lower),
        style=sample_mouth_style(image, pose),
        far_end=-1 if far_end is None else far_end,
        front=front,
    )


def front_edge(image: np.ndarray, near: np.ndarray, far: np.ndarray) -> float | None:
    """Where the photo's strongest colour step along the mouth line, from the mouth's middle to
    a quarter beyond the far corner, lies: a share of the way from the ``near`` corner (0) to
    the ``far`` one (1). None when the step is weak or at or past the far corner."""
    axis = far - near  # (2,)
    length = float(np.linalg.norm(axis))
    if length < 2.0:
        return None
    normal = np.array([-axis[1], axis[0]]) / length
    us = np.arange(0.5, 1.25, 0.25 / length, dtype=np.float32)  # (N,) quarter-pixel steps
    line = near + us[:, None] * axis  # (N, 2)
    xy = (line[None] + np.array([-1.0, 0.0, 1.0])[:, None, None] * normal).astype(np.float32)
    samples = cv2.remap(
        image, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )  # (3, N, 3) uint8
    rgb = samples.astype(np.float32).mean(0)  # (N, 3) across the three parallel lines
    lag = 8  # 2 px in quarter-pixel steps
    step = np.linalg.norm(rgb[lag:] - rgb[:-lag], axis=1)  # (N - lag,)
    if len(step) == 0 or step.max() < FRONT_STEP:
        return None
    k = int(np.argmax(step))
    u = float(us[k] + 0.5 * (us[k + lag] - us[k]))
    return u if u < 1.0 else None


def lip_row(points: np.ndarray, row: np.ndarray) -> np.ndarray:
    """(7, 2) float32: a 5-landmark inner lip row with a point added halfway along the curve
    next to each corner, where the lip bends most."""
    curve = catmull_rom(points[row, :2].astype(np.float32), steps=2)  # (9, 2) points and mids
    return curve[[0, 1, 2, 4, 6, 7, 8]]


def teeth_split(image: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> float:
    """Where the upper teeth end, as a share of the inner-lip opening (0 at the upper lip).

    Along the middle of the mouth, a row clearly darker than the rest of the interior between
    30 % and 85 % of the way down is the gap between the upper and lower teeth; without one
    (only the upper teeth show, as in most smiles) :data:`UPPER_TEETH_SHARE` is used.
    """
    ts = np.linspace(0.0, 1.0, 21, dtype=np.float32)  # (21,) from the upper to the lower lip
    columns = upper[2:5, None, :] + ts[None, :, None] * (lower[2:5] - upper[2:5])[:, None, :]
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    xy = columns.reshape(-1, 1, 2).astype(np.float32)  # (63, 1, 2)
    samples = cv2.remap(luma, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR)  # (63, 1)
    profile = np.median(samples.reshape(3, len(ts)), axis=0)  # (21,)
    search = (ts >= 0.3) & (ts <= 0.85)
    k = int(np.argmin(np.where(search, profile, np.inf)))
    inside = profile[(ts >= 0.15) & (ts <= 0.85)]
    if profile[k] < 0.6 * float(np.median(inside)):
        return float(ts[k])
    return UPPER_TEETH_SHARE


def _eye_span(points: np.ndarray) -> float:
    a, b = points[EYE_CORNERS, :2]
    return float(max(np.linalg.norm(b - a), 1.0))


def sample_mouth_style(image: np.ndarray, points: np.ndarray) -> MouthStyle:
    """Derive cavity, teeth and lash colours from the reference photo and its keypoints."""
    lips = points[layout.OUTER_LIPS, :2]
    x0, y0 = np.floor(lips.min(0)).astype(int)
    x1, y1 = np.ceil(lips.max(0)).astype(int) + 1
    roi = image[max(y0, 0) : y1, max(x0, 0) : x1].reshape(-1, 3).astype(np.float32)
    if len(roi) == 0:
        roi = image.reshape(-1, 3).astype(np.float32)
    luma = roi @ np.array([0.299, 0.587, 0.114], np.float32)
    lip_dark = roi[luma <= np.percentile(luma, 20)].mean(0)
    cavity = lip_dark * 0.35 + np.array([18, 6, 8], np.float32)
    teeth = np.array([224, 212, 190], np.float32)  # ivory, as teeth look in the mouth's shade
    inner = points[layout.INNER_LIPS, :2]
    if mouth_gap(points) > 3.0:  # the reference shows its mouth interior: take the teeth colour
        ix0, iy0 = np.floor(inner.min(0)).astype(int)
        ix1, iy1 = np.ceil(inner.max(0)).astype(int) + 1
        inside = image[max(iy0, 0) : iy1, max(ix0, 0) : ix1].reshape(-1, 3).astype(np.float32)
        if len(inside) > 8:
            il = inside @ np.array([0.299, 0.587, 0.114], np.float32)
            bright = inside[il >= np.percentile(il, 80)]
            teeth = 0.5 * teeth + 0.5 * bright.mean(0)
    tongue = np.clip(lip_dark * 0.75 + np.array([30, -5, -5], np.float32), 0, 255)
    colours = [cavity, teeth, lip_dark * 0.3, tongue]
    if np.percentile(np.ptp(roi, axis=1), 99) < GREY_SPREAD:  # a greyscale photo: grey paint
        luma = np.array([0.299, 0.587, 0.114], np.float32)
        colours = [np.full(3, float(c @ luma), np.float32) for c in colours]
    return MouthStyle(*colours)


def mouth_gap(points: np.ndarray) -> float:
    """Inner-lip opening of a pose in pixels: the mean vertical gap of the three middle pairs
    (negative values are clipped to 0)."""
    return max(float(np.mean(points[LOWER[1:4], 1] - points[UPPER[1:4], 1])), 0.0)


def opening(target: np.ndarray, ref: MouthReference) -> float:
    """In [0, 1]: how far the target mouth opens beyond the reference's own opening (scaled
    with the head); 0 up to 1 px beyond, 1 from 4 px beyond, and 0 when the target's lips or
    eye corners are not visible (nothing is shaped or painted then)."""
    if (target[_NEEDED, 2] < layout.VISIBILITY_THRESHOLD).any():
        return 0.0
    scale = _eye_span(target) / ref.eye_span
    return float(np.clip((mouth_gap(target) - ref.gap * scale - 1.0) / 3.0, 0.0, 1.0))


def round_out(
    curve: np.ndarray, left: np.ndarray, right: np.ndarray, pull: float = ROUNDING_PULL
) -> np.ndarray:
    """Push a lower lip curve (K, 2) from ``right`` to ``left`` corner towards the elliptical
    arc through both corners and its deepest point. Only ever pushes outwards."""
    axis = left - right
    length = max(float(np.linalg.norm(axis)), 1e-6)
    along = axis / length
    normal = np.array([-along[1], along[0]])  # (2,) perpendicular, pointing down the face
    if normal[1] < 0:
        normal = -normal
    rel = curve - right  # (K, 2)
    u = np.clip(rel @ along / length, 0.0, 1.0)  # (K,) position between the corners
    depth = rel @ normal  # (K,) how far below the corner line
    arc = depth.max() * np.sqrt(np.clip(1.0 - (2.0 * u - 1.0) ** 2, 0.0, 1.0))  # (K,)
    push = pull * np.maximum(arc - depth, 0.0)  # (K,)
    return curve + push[:, None] * normal


def uncross_lips(target: np.ndarray) -> np.ndarray:
    """A (134, 3) pose whose inner lower lip rose above the inner upper lip (a model closing an
    already closed mouth further) with its lower lip, inner and outer, lowered to meet the upper
    one (by the crossing, tapering to nothing at the corners), so the warp's mesh does not fold;
    the corners stay. Other poses are returned as given.
    """
    over = target[UPPER[1:4], 1] - target[LOWER[1:4], 1]  # (3,) > 0 where crossed
    if not (over > 0).any():
        return target
    corners = target[OUTER_LOWER[[0, -1]], 0]  # (2,) x of the outer corners
    xp = np.concatenate([corners, target[LOWER[1:4], 0]])  # (5,)
    fp = np.concatenate([[0.0, 0.0], np.maximum(over, 0.0)])
    order = np.argsort(xp)
    pose = target.copy()
    lower = np.concatenate([LOWER[1:4], OUTER_LOWER[1:-1]])  # inner and outer, no corners
    pose[lower, 1] += np.interp(pose[lower, 0], xp[order], fp[order])
    return pose


def shape_mouth(target: np.ndarray, ref: MouthReference) -> tuple[np.ndarray, np.ndarray]:
    """Round the target's open lower lip in proportion to the opening.

    Returns the (134, 3) pose with its inner and outer lower lip moved (the target itself when
    the mouth is not open beyond the reference; crossed lips are uncrossed first, see
    :func:`uncross_lips`) and its (7, 2) inner lower lip row, whose two added points join the
    face mesh.
    """
    target = uncross_lips(target)
    lower = lip_row(target, LOWER)
    strength = opening(target, ref)
    if strength <= 0.0:
        return target, lower
    right, left = lower[0], lower[-1]
    rounded = round_out(lower, left, right, ROUNDING_PULL * strength).astype(np.float32)
    # The outer lower lip moves as the inner one does at the same place along the mouth.
    along = (left - right) / max(float(np.linalg.norm(left - right)), 1e-6)
    u_inner = (lower - right) @ along  # (7,)
    order = np.argsort(u_inner)
    outer = target[OUTER_LOWER, :2]  # (7, 2)
    u_outer = (outer - right) @ along
    shift = np.stack(
        [np.interp(u_outer, u_inner[order], (rounded - lower)[order, k]) for k in range(2)], 1
    )  # (7, 2)
    pose = target.copy()
    pose[LOWER, :2] = rounded[[0, 2, 3, 4, 6]]
    pose[OUTER_LOWER, :2] = outer + shift
    return pose, rounded


def paint_mouth(
    frame: np.ndarray, target: np.ndarray, lower: np.ndarray, ref: MouthReference
) -> None:
    """Show the inside of the target's mouth where it opens beyond the reference's, in place.

    ``target`` and ``lower`` are what :func:`shape_mouth` returned: the pose the frame was warped
    to and its inner lower lip row.
    """
    strength = opening(target, ref)
    if strength <= 0.0:
        return
    upper = lip_row(target, UPPER)
    box = roi_box(np.concatenate([upper, lower]), frame.shape, pad=3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    origin = np.array([x0, y0], np.float32)
    upper_curve, lower_curve = catmull_rom(upper - origin), catmull_rom(lower - origin)
    inside = fill_coverage(roi.shape, np.concatenate([upper_curve, lower_curve[::-1]]))
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    if ref.front is not None:  # a turned face: nothing past its edge
        inside = inside * _before_front(xx, yy, upper - origin, ref)
    if ref.shows_teeth:
        interior, top, bottom = _teeth_from_photo(roi, target, upper, lower, ref, box)
        top, bottom = catmull_rom(top - origin), catmull_rom(bottom - origin)
        cavity_mask = fill_coverage(roi.shape, np.concatenate([top, bottom[::-1]]))
        paint = _cavity(xx, yy, top, bottom, ref.style)
        strength = 1.0  # continuous already: the cavity grows from nothing between the teeth
    else:
        interior, cavity_mask = roi, inside
        paint = _cavity(xx, yy, upper_curve, lower_curve, ref.style)
        paint = _paint_teeth(paint, xx, yy, upper_curve, lower_curve, ref.style)
    content = interior * (1.0 - cavity_mask[..., None]) + paint * cavity_mask[..., None]
    a = (inside * strength)[..., None]
    frame[y0:y1, x0:x1] = np.clip(roi * (1.0 - a) + content * a + 0.5, 0, 255).astype(np.uint8)


def _before_front(
    xx: np.ndarray, yy: np.ndarray, upper: np.ndarray, ref: MouthReference
) -> np.ndarray:
    """(h, w) coverage of the side of the face's edge (``ref.front``) the mouth is on, with a
    1-px ramp, at ROI pixels ``xx``, ``yy``; ``upper`` is the target's (7, 2) inner upper lip in
    ROI pixels."""
    near, far = upper[-1 - ref.far_end], upper[ref.far_end]
    axis = far - near
    length = max(float(np.linalg.norm(axis)), 1e-6)
    along = ((xx - near[0]) * axis[0] + (yy - near[1]) * axis[1]) / length  # px from near
    return np.clip(ref.front * length - along + 0.5, 0.0, 1.0)


def _teeth_from_photo(
    roi: np.ndarray,
    target: np.ndarray,
    upper: np.ndarray,
    lower: np.ndarray,
    ref: MouthReference,
    box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference's mouth interior split between the jaws.

    Returns the ROI with the interior redrawn (upper band moved with the upper lip, lower band
    with the lower lip, each keeping its height scaled with the head) and the (7, 2) edges of
    the cavity between them: under the upper teeth and above the lower band. ``upper`` and
    ``lower`` are the target's (7, 2) inner lip rows.
    """
    scale = _eye_span(target) / ref.eye_span
    ref_height = np.linalg.norm(ref.lower - ref.upper, axis=1)  # (7,), 0 at the corners
    span = lower - upper  # (7, 2)
    length = np.linalg.norm(span, axis=1)
    direction = span / np.maximum(length, 1e-6)[:, None]
    share = ref.upper_share
    up_len = share * ref_height * scale
    low_len = (1.0 - share) * ref_height * scale
    opened = (length > up_len + low_len)[:, None]
    meet = upper + share * span  # where the bands meet when not opened further
    teeth_edge = np.where(opened, upper + direction * up_len[:, None], meet)
    lower_edge = np.where(opened, lower - direction * low_len[:, None], meet)
    ref_meet = ref.upper + share * (ref.lower - ref.upper)
    middle = slice(1, -1)
    targets = np.concatenate([upper, teeth_edge[middle], lower_edge[middle], lower[middle]])
    sources = np.concatenate([ref.upper, ref_meet[middle], ref_meet[middle], ref.lower[middle]])
    map_x, map_y, covered = warp_field.piecewise_affine(_TRIANGLES, targets, sources, box)
    moved = cv2.remap(ref.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    interior = np.where(covered[..., None] > 0, moved.astype(np.float32), roi)
    return interior, teeth_edge, lower_edge


def _cavity(
    xx: np.ndarray, yy: np.ndarray, top: np.ndarray, bottom: np.ndarray, style: MouthStyle
) -> np.ndarray:
    """(h, w, 3) dark cavity between two curves, deeper towards the centre, with the tongue
    low in wide openings."""
    width = float(np.linalg.norm(top[-1] - top[0])) + 1e-3
    gap = float(np.mean(bottom[1:-1, 1] - top[1:-1, 1])) if len(top) > 2 else 1.0
    gap = max(gap, 1.0)
    centre = 0.5 * (top[len(top) // 2] + bottom[len(bottom) // 2])
    r = np.hypot((xx - centre[0]) / (0.5 * width), (yy - centre[1]) / (0.5 * gap))
    depth = np.clip(1.0 - r, 0.0, 1.0)[..., None]
    paint = style.cavity * (1.0 - 0.55 * depth)
    low = bottom[len(bottom) // 2]
    tongue = np.exp(-(((xx - low[0]) / (0.28 * width)) ** 2 + ((yy - low[1]) / (0.35 * gap)) ** 2))
    tongue *= np.clip((gap / width - 0.15) / 0.2, 0.0, 1.0)
    return paint * (1 - 0.6 * tongue[..., None]) + style.tongue * (0.6 * tongue[..., None])


def _paint_teeth(
    paint: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    top: np.ndarray,
    bottom: np.ndarray,
    style: MouthStyle,
) -> np.ndarray:
    """A band of upper teeth under the upper lip, fading out towards the mouth corners."""
    width = float(np.linalg.norm(top[-1] - top[0])) + 1e-3
    gap = max(float(np.mean(bottom[1:-1, 1] - top[1:-1, 1])), 1.0)
    teeth_h = min(0.38 * gap, 0.13 * width)
    teeth = fill_coverage(paint.shape, np.concatenate([top, top[::-1] + (0, teeth_h)]))
    centre_x = 0.5 * (top[0, 0] + top[-1, 0])
    teeth *= np.sqrt(np.clip(1.0 - np.abs(xx - centre_x) / (0.42 * width), 0.0, 1.0))
    top_y = top[len(top) // 2, 1]
    shade = 0.75 + 0.25 * np.clip((yy - top_y) / max(teeth_h, 1.0), 0.0, 1.0)
    teeth_rgb = style.teeth * shade[..., None]
    return paint * (1.0 - teeth[..., None]) + teeth_rgb * teeth[..., None]
