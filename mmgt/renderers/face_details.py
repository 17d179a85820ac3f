"""The warp renderer's eyelids: a closing lid is shaded and gets its lash line, which a warp of
an open-eyed photo cannot show. (The mouth is in :mod:`mmgt.renderers.mouth`.)"""

from __future__ import annotations

import cv2
import numpy as np

from mmgt.keypoints import layout
from mmgt.renderers.mouth import MouthStyle
from mmgt.renderers.raster import fill_coverage, line_coverage, roi_box

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
        box = roi_box(lid, frame.shape, pad=0.5 * width)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        roi = frame[y0:y1, x0:x1].astype(np.float32)
        # Lid shading: the skin just above the closed line is in the lid's shadow.
        above = np.concatenate([lid, (lid - (0, 0.3 * width))[::-1]])
        shade = fill_coverage(roi.shape, above - (x0, y0))
        shade = cv2.GaussianBlur(shade, (0, 0), max(0.08 * width, 0.8))
        lash = line_coverage(roi.shape, lid - (x0, y0), max(1, int(round(0.1 * width))))
        lash = cv2.GaussianBlur(lash, (3, 3), 0)
        roi *= 1.0 - 0.3 * strength * shade[..., None]
        a = 0.9 * strength * lash[..., None]
        roi = roi * (1 - a) + style.lip_line * a
        frame[y0:y1, x0:x1] = np.clip(roi + 0.5, 0, 255).astype(np.uint8)
