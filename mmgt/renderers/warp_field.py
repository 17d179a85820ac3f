"""Backward warp fields for the warp renderer: a smooth field and a piecewise-affine face mesh.

Both give, for an output pixel ``v``, the reference pixel it shows.

**Smooth field** (body, hands, background). ``U`` is a normalised Gaussian (Shepard)
interpolation of the control points' backward displacements ``u_k = p_k − q_k`` (reference
position minus target position), evaluated in *output* space so no inversion is needed:

    U(v) = Σ_k w_k(v) u_k / (ε + Σ_k w_k(v)),   w_k(v) = exp(−|v − q_k|² / 2σ_k²)

The Gaussian factorises over x and y, so on a regular grid each sum is one small matrix product
(``By · diag(u) · Axᵀ``) with no per-pixel exp. ``ε`` is a zero-displacement anchor: pixels far
from every control point stay where they are.

**Face mesh.** A fixed triangulation of the face points (plus a ring around the head) maps each
target triangle affinely onto its reference triangle, at full resolution. Lips and eyelids are
mesh edges, so a closing mouth or eye collapses the triangles between them and nothing of the
reference's interior (teeth, iris) leaks through.
"""

from __future__ import annotations

import cv2
import numpy as np

_SUB = 4  # fixed-point sub-pixel bits for polygon rasterisation
_MIN_AREA = 0.5  # px²: nearly collapsed triangles (a closed mouth) are not drawn


def coarse_axis(size: int, cells: int) -> np.ndarray:
    """Pixel positions of ``cells`` coarse samples whose bilinear ``cv2.resize`` fills ``size``.

    cv2.resize maps output pixel x to source (x + 0.5)·cells/size − 0.5, so sample i sits at
    output pixel (i + 0.5)·size/cells − 0.5.
    """
    return ((np.arange(cells, dtype=np.float32) + 0.5) * (size / cells) - 0.5).astype(np.float32)


def gaussian_factors(axis: np.ndarray, centers: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """(len(axis), K) separable Gaussian factors exp(−(a − c_k)² / 2σ_k²).

    Factors below e^−40 are flushed to zero: float32 denormals make BLAS products ~10× slower.
    """
    d = axis[:, None] - centers[None, :]  # (G, K)
    q = np.minimum((d * d) / (2.0 * sigma[None, :] ** 2), 40.0)
    f = np.exp(-q).astype(np.float32)
    f[q >= 40.0] = 0.0
    return f


def smooth_field(
    xs: np.ndarray,
    ys: np.ndarray,
    targets: np.ndarray,
    sources: np.ndarray,
    sigma: np.ndarray,
    weight: np.ndarray,
    eps: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Backward displacement (Ux, Uy), each (len(ys), len(xs)), from K control points.

    Args:
        xs, ys: grid pixel positions (see :func:`coarse_axis`).
        targets: (K, 2) control positions in the output frame.
        sources: (K, 2) the reference positions they show.
        sigma: (K,) Gaussian radius per control point, in pixels.
        weight: (K,) per-point weight (0 disables a point, e.g. when it is not visible).
        eps: weight of the implicit zero-displacement anchor.
    """
    u = (sources - targets).astype(np.float32)  # (K, 2)
    ax = gaussian_factors(xs, targets[:, 0], sigma) * weight[None, :]  # (Gx, K)
    by = gaussian_factors(ys, targets[:, 1], sigma)  # (Gy, K)
    num_x = (by * u[:, 0]) @ ax.T  # (Gy, Gx)
    num_y = (by * u[:, 1]) @ ax.T
    den = by @ ax.T + np.float32(eps)
    return num_x / den, num_y / den


def mesh_triangles(points: np.ndarray, opened: np.ndarray | None = None) -> np.ndarray:
    """(M, 3) vertex indices: a Delaunay triangulation of ``opened`` (or ``points``).

    Pass an ``opened`` copy of the points (mouth and eyes pulled open) so that the mouth and eye
    interiors get their own triangles even when the reference has them closed.
    """
    from scipy.spatial import Delaunay  # noqa: PLC0415 - 0.4 s to import; needed per avatar

    tri = Delaunay(points if opened is None else opened).simplices.astype(np.int32)
    return tri


def piecewise_affine(
    triangles: np.ndarray,
    targets: np.ndarray,
    sources: np.ndarray,
    box: tuple[int, int, int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Backward map of a triangle mesh inside ``box`` = (x0, y0, x1, y1), at pixel resolution.

    Returns (map_x, map_y, covered): reference coordinates for each pixel of the box and a
    float32 mask of the pixels the target mesh covers (maps are 0 where it does not).
    """
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    tgt = targets[triangles]  # (M, 3, 2)
    src = sources[triangles]
    # Affine A (2×3) per triangle with src = A · [x, y, 1] for every target vertex.
    ones = np.ones((len(triangles), 3, 1), np.float64)
    tgt_h = np.concatenate([tgt.astype(np.float64), ones], axis=2)  # (M, 3, 3)
    det = np.linalg.det(tgt_h)
    ok = np.abs(det) > 2 * _MIN_AREA  # |det| is twice the triangle's area
    affine = np.linalg.solve(tgt_h[ok], src[ok].astype(np.float64)).transpose(0, 2, 1)
    # Row 0: no triangle (all zero); row t + 1: triangle t's (a00 a01 a02 a10 a11 a12, covered).
    table = np.zeros((len(triangles) + 1, 7), np.float32)
    table[1:][ok, :6] = affine.reshape(-1, 6)
    table[1:][ok, 6] = 1.0
    # Rasterise triangle numbers into one image (later triangles win on shared edges), then
    # look each pixel's coefficients up: one single-channel fill per triangle.
    ids = np.zeros((h, w), np.int32)
    polys = np.round((tgt - (x0, y0)) * (1 << _SUB)).astype(np.int32)  # (M, 3, 2) fixed point
    for t in np.flatnonzero(ok).tolist():
        cv2.fillConvexPoly(ids, polys[t], t + 1, cv2.LINE_8, _SUB)
    coef = np.take(table, ids, axis=0)  # (h, w, 7); 3× faster than table[ids]
    gx = np.arange(x0, x1, dtype=np.float32)[None, :]
    gy = np.arange(y0, y1, dtype=np.float32)[:, None]
    map_x = coef[..., 0] * gx + coef[..., 1] * gy + coef[..., 2]
    map_y = coef[..., 3] * gx + coef[..., 4] * gy + coef[..., 5]
    return map_x, map_y, coef[..., 6].copy()


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """2×3 similarity transform (rotation, uniform scale, shift) mapping src → dst (Umeyama)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var = (s * s).sum()
    if var < 1e-9:
        return np.array([[1, 0, mu_d[0] - mu_s[0]], [0, 1, mu_d[1] - mu_s[1]]], np.float32)
    cov = d.T @ s / len(src)  # (2, 2)
    uu, sv, vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(uu @ vt)) or 1.0
    diag = np.array([1.0, sign])
    rot = uu @ np.diag(diag) @ vt
    scale = (sv * diag).sum() / (var / len(src))
    m = np.zeros((2, 3), np.float32)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2×3 affine transform to (N, 2) points."""
    return pts @ m[:, :2].T + m[:, 2]
