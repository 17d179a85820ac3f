"""What a warp of the reference photo cannot show: the inside of an opening mouth, closed lids.

Both are painted on the warped frame inside small regions of interest, anti-aliased, and blended
with feathered masks so they sit in the photo rather than on top of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mmgt.keypoints import layout

_SUB = 4  # fixed-point sub-pixel bits for cv2 polygon drawing (×16)
_SCALE = 1 << _SUB


@dataclass(frozen=True)
class MouthStyle:
    """Colours sampled once from the reference photo."""

    cavity: np.ndarray  # (3,) float32 RGB of the darkest part of the mouth
    teeth: np.ndarray  # (3,) float32 RGB
    lip_line: np.ndarray  # (3,) float32 RGB, a dark lip colour for the closed-lid lash line
    tongue: np.ndarray  # (3,) float32 RGB


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
    teeth = np.array([226, 220, 208], np.float32)
    inner = points[layout.INNER_LIPS, :2]
    gap = _gap(points)
    if gap > 3.0:  # the reference shows its mouth interior: take the teeth colour from it
        ix0, iy0 = np.floor(inner.min(0)).astype(int)
        ix1, iy1 = np.ceil(inner.max(0)).astype(int) + 1
        inside = image[max(iy0, 0) : iy1, max(ix0, 0) : ix1].reshape(-1, 3).astype(np.float32)
        if len(inside) > 8:
            il = inside @ np.array([0.299, 0.587, 0.114], np.float32)
            bright = inside[il >= np.percentile(il, 80)]
            teeth = 0.5 * teeth + 0.5 * bright.mean(0)
    tongue = np.clip(lip_dark * 0.75 + np.array([30, -5, -5], np.float32), 0, 255)
    return MouthStyle(cavity, teeth, lip_dark * 0.3, tongue)


def _gap(points: np.ndarray) -> float:
    """Mean vertical gap between the upper and lower inner lip (pixels)."""
    upper = points[layout.face_index(np.array([61, 62, 63])), 1]
    lower = points[layout.face_index(np.array([67, 66, 65])), 1]
    return float(np.mean(lower - upper))


def mouth_gap(points: np.ndarray) -> float:
    """Inner-lip opening of a pose, in pixels (negative values are clipped to 0)."""
    return max(_gap(points), 0.0)


def paint_mouth(
    frame: np.ndarray, target: np.ndarray, reference_gap: float, style: MouthStyle
) -> None:
    """Paint the mouth interior inside the target inner-lip polygon, in place.

    The interior fades in as the target opening exceeds the reference's own opening (what the
    reference shows between its lips is reused by the warp up to that point). It is a dark
    cavity, shaded deeper towards the back, with the upper teeth under the upper lip and, for
    wide openings, the tongue low in the mouth.
    """
    gap = mouth_gap(target)
    alpha = float(np.clip((gap - reference_gap - 1.0) / 3.0, 0.0, 1.0))
    if alpha <= 0.0:
        return
    inner = target[layout.INNER_LIPS, :2]
    box = _roi(inner, frame.shape, pad=3)
    if box is None:
        return
    x0, y0, x1, y1 = box
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    local = inner - (x0, y0)
    width = float(np.linalg.norm(local[4] - local[0])) + 1e-3
    # Smooth lip curves (8 landmarks make an octagon). The lower curve reaches slightly past
    # the landmarks, which tend to sit on the teeth rather than on the lip edge.
    upper = _smooth_curve(local[[0, 1, 2, 3, 4]])
    lower = _smooth_curve(local[[4, 5, 6, 7, 0]])
    t = np.linspace(0.0, 1.0, len(lower))
    lower = lower + np.stack([0 * t, (0.06 * gap + 0.6) * np.sin(np.pi * t)], 1)
    lower = _round_out(lower, local[0], local[4])
    mask = _fill(roi.shape[:2], np.concatenate([upper, lower]))
    # Cavity: darker towards the centre of the opening.
    yy, xx = np.mgrid[0 : y1 - y0, 0 : x1 - x0].astype(np.float32)
    centre = local.mean(0)
    r = np.hypot((xx - centre[0]) / (0.5 * width), (yy - centre[1]) / max(0.5 * gap, 1.0))
    depth = np.clip(1.0 - r, 0.0, 1.0)[..., None]
    paint = style.cavity * (1.0 - 0.55 * depth)
    # Teeth: a band under the upper lip, fading out towards the mouth corners.
    teeth_h = min(0.3 * gap, 0.11 * width)
    teeth = _fill(roi.shape[:2], np.concatenate([upper, upper[::-1] + (0, teeth_h)]))
    # Tongue: a soft, redder glow low in the cavity, visible on wide openings.
    bottom = lower[len(lower) // 2]
    tongue = np.exp(
        -(((xx - bottom[0]) / (0.28 * width)) ** 2 + ((yy - bottom[1]) / (0.35 * gap)) ** 2)
    )
    tongue *= np.clip((gap / width - 0.15) / 0.2, 0.0, 1.0)
    paint = paint * (1 - 0.6 * tongue[..., None]) + style.tongue * (0.6 * tongue[..., None])
    across = np.clip(1.0 - np.abs(xx - centre[0]) / (0.42 * width), 0.0, 1.0)
    teeth *= np.sqrt(across)
    shade = 0.75 + 0.25 * np.clip((yy - (centre[1] - 0.5 * gap)) / max(teeth_h, 1.0), 0.0, 1.0)
    teeth_rgb = style.teeth * shade[..., None]
    paint = paint * (1.0 - teeth[..., None]) + teeth_rgb * teeth[..., None]
    a = (mask * alpha)[..., None]
    out = roi * (1.0 - a) + paint * a
    frame[y0:y1, x0:x1] = np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _smooth_curve(points: np.ndarray, steps: int = 4) -> np.ndarray:
    """Catmull-Rom curve through (N, 2) points, ``steps`` samples per segment, ends included."""
    p = np.concatenate([points[:1], points, points[-1:]])  # (N + 2, 2), ends repeated
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[:, None, None]  # (steps, 1, 1)
    p0, p1, p2, p3 = p[:-3], p[1:-2], p[2:-1], p[3:]  # each (N − 1, 2)
    curve = 0.5 * (
        2 * p1
        + (p2 - p0) * t
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
        + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )  # (steps, N − 1, 2)
    return np.concatenate([curve.transpose(1, 0, 2).reshape(-1, 2), points[-1:]])


def _round_out(
    curve: np.ndarray, left: np.ndarray, right: np.ndarray, pull: float = 0.7
) -> np.ndarray:
    """Push a lower lip curve (K, 2) from ``right`` to ``left`` corner towards the elliptical
    arc through both corners and its deepest point. Three lower-lip landmarks alone make a
    V or a trapezoid; an open mouth's lower edge is round. Only ever pushes outwards."""
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


def _roi(points: np.ndarray, shape: tuple[int, ...], pad: int) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(points.min(0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(0)).astype(int) + pad + 1
    h, w = shape[:2]
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    return x0, y0, x1, y1


def _fill(shape: tuple[int, ...], polygon: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a polygon (pixel-centre coordinates)."""
    mask = np.zeros(shape[:2], np.float32)
    cv2.fillPoly(mask, [np.round(polygon * _SCALE).astype(np.int32)], 1.0, cv2.LINE_AA, _SUB)
    return mask


EYES = (
    # (outer corner, upper lid a, upper lid b, inner corner, lower lid b, lower lid a) as iBUG
    (36, 37, 38, 39, 40, 41),
    (42, 43, 44, 45, 46, 47),
)


def eye_openness(points: np.ndarray, eye: tuple[int, ...]) -> float:
    """Lid gap over eye width for one eye (iBUG indices)."""
    p = points[layout.face_index(np.array(eye)), :2]
    width = np.linalg.norm(p[3] - p[0]) + 1e-6
    gap = (np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])) / 2
    return float(gap / width)


def paint_closed_lids(
    frame: np.ndarray, target: np.ndarray, reference: np.ndarray, style: MouthStyle
) -> None:
    """Shade a closing lid and draw its lash line, in place, when an eye is mostly shut."""
    for eye in EYES:
        ref_open = eye_openness(reference, eye)
        if ref_open < 1e-3:
            continue
        closure = 1.0 - eye_openness(target, eye) / ref_open
        strength = float(np.clip((closure - 0.4) / 0.5, 0.0, 1.0))
        if strength <= 0.0:
            continue
        p = target[layout.face_index(np.array(eye)), :2]
        # The closed lid line: the upper lid points, between the two corners.
        lid = np.array([p[0], p[1], p[2], p[3]])
        width = float(np.linalg.norm(p[3] - p[0]))
        x0, y0 = np.floor(lid.min(0) - 0.5 * width).astype(int)
        x1, y1 = np.ceil(lid.max(0) + 0.5 * width).astype(int)
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 3 or y1 - y0 < 3:
            continue
        roi = frame[y0:y1, x0:x1].astype(np.float32)
        # Lid shading: the skin just above the closed line is in the lid's shadow.
        shade = np.zeros(roi.shape[:2], np.float32)
        above = np.concatenate([lid, (lid - (0, 0.3 * width))[::-1]])
        cv2.fillPoly(
            shade, [np.round((above - (x0, y0)) * _SCALE).astype(np.int32)], 1.0, cv2.LINE_AA, _SUB
        )
        shade = cv2.GaussianBlur(shade, (0, 0), max(0.08 * width, 0.8))
        lash = np.zeros(roi.shape[:2], np.float32)
        thick = max(1, int(round(0.1 * width)))
        cv2.polylines(
            lash,
            [np.round((lid - (x0, y0)) * _SCALE).astype(np.int32)],
            False,
            1.0,
            thick,
            cv2.LINE_AA,
            _SUB,
        )
        lash = cv2.GaussianBlur(lash, (3, 3), 0)
        roi *= 1.0 - 0.3 * strength * shade[..., None]
        a = 0.9 * strength * lash[..., None]
        roi = roi * (1 - a) + style.lip_line * a
        frame[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
