"""Small rasterisation helpers for the warp renderer's painted details: anti-aliased coverage
masks, smooth curves through landmarks and clipped regions of interest."""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

SUB = 4  # fixed-point sub-pixel bits for cv2 drawing (coordinates × 16)
_SCALE = 1 << SUB
_SUPER = 4  # supersampling factor of filled polygons


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points, np.float64) * _SCALE).astype(np.int32)


def fill_coverage(shape: tuple[int, ...], polygon: np.ndarray) -> np.ndarray:
    """(H, W) float32 anti-aliased coverage in [0, 1] of a polygon (pixel-centre coordinates).

    The polygon is filled at 4× resolution and area-averaged, which gives each pixel the share
    of it the polygon covers. (OpenCV's own ``LINE_AA`` fill draws hard edges on float images
    and, on 8-bit ones, a soft outline that grows the shape by about half a pixel.)
    """
    h, w = shape[:2]
    fine = np.zeros((h * _SUPER, w * _SUPER), np.uint8)
    fine_xy = (np.asarray(polygon, np.float64) + 0.5) * _SUPER - 0.5
    cv2.fillPoly(fine, [_fixed(fine_xy)], 255, cv2.LINE_8, SUB)
    small = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


def line_coverage(shape: tuple[int, ...], polyline: np.ndarray, thickness: int) -> np.ndarray:
    """(H, W) float32 anti-aliased coverage in [0, 1] of an open polyline (OpenCV's ``LINE_AA``
    drawn on 8-bit; it anti-aliases nothing on float images)."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.polylines(mask, [_fixed(polyline)], False, 255, thickness, cv2.LINE_AA, SUB)
    return mask.astype(np.float32) * np.float32(1 / 255)


def roi_box(
    points: np.ndarray, shape: tuple[int, ...], pad: float
) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) around ``points`` plus ``pad``, clipped to the image; None if tiny."""
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int) + 1
    h, w = shape[:2]
    x0, y0, x1, y1 = max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h)
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    return x0, y0, x1, y1


@lru_cache(maxsize=32)
def _catmull_rom_basis(n: int, steps: int) -> np.ndarray:
    """(K, N) weights mapping N control points to the K = (N − 1)·steps + 1 curve samples."""
    t = np.linspace(0.0, 1.0, steps, endpoint=False)  # (steps,)
    w = 0.5 * np.stack(
        [-t + 2 * t**2 - t**3, 2 - 5 * t**2 + 3 * t**3, t + 4 * t**2 - 3 * t**3, -(t**2) + t**3],
        1,
    )  # (steps, 4): weights of p0..p3 (Catmull-Rom, tension 0.5)
    basis = np.zeros(((n - 1) * steps + 1, n + 2))  # over the points with repeated ends
    for seg in range(n - 1):
        basis[seg * steps : (seg + 1) * steps, seg : seg + 4] = w
    basis[-1, n] = 1.0  # the last point itself
    # Fold the repeated end points back onto the first and last control points.
    folded = basis[:, 1:-1].copy()
    folded[:, 0] += basis[:, 0]
    folded[:, -1] += basis[:, -1]
    return folded


def catmull_rom(points: np.ndarray, steps: int = 4) -> np.ndarray:
    """Catmull-Rom curve through (N, 2) points, ``steps`` samples per segment, ends included
    (the end points are repeated as their own outer neighbours)."""
    basis = _catmull_rom_basis(len(points), steps)  # (K, N)
    return (basis @ points.astype(np.float64)).astype(points.dtype, copy=False)
