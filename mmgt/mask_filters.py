"""Exact re-implementations of the official mask post-processing filters.

The official code post-processes each mask with ``cv2.resize`` (8× INTER_LINEAR), then
``cv2.GaussianBlur`` and ``cv2.normalize``, then Pillow BILINEAR pyramid levels. OpenCV and
Pillow compute these in exact integer fixed point, so they are reproduced here as small matrix
products that give the same bits, batched over frames and about 4× faster than calling the
libraries per image (``tests/test_masks.py`` checks them bitwise against both libraries).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

NUM_LEVELS = 4
_SMALL_GAUSSIANS = {  # OpenCV's fixed kernels for ksize ≤ 7 with sigma ≤ 0
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


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


def complement(levels: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """1 − each level: the background pyramid from the face(+hands) pyramid."""
    return tuple(np.float32(1) - lv for lv in levels)
