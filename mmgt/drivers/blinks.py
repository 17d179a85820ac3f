"""Blinks: seeded lid closures that do not depend on the audio, shared by the drivers.

Blinks cannot be predicted from speech. A few-step diffusion sampler returns close to the
conditional mean of its training motion, in which blinks at random times average out, so the
shipped SMGA model keeps its eyes open (measured: its lid gap never drops below 85 % of the
median). The SMGA driver therefore lays this schedule over the model's eyes, as the procedural
driver does. The schedule is a pure function of (seed, absolute frame index), so an offline
clip and a live stream cut into any windows blink at the same frames.
"""

from __future__ import annotations

import numpy as np

from mmgt.keypoints import layout

PROFILE = np.array([0.35, 0.85, 1.0, 0.75, 0.35, 0.1])  # closure over the frames of a blink
LIDS = ((37, 41), (38, 40), (43, 47), (44, 46))  # (upper, lower) lid points, iBUG
CLOSURE = 0.95  # share of the reference lid gap a full blink closes
SKIP = 0.1  # share of blocks without a blink


def hash01(seed: int, *keys: int | np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) values from integer keys (vectorised, platform-stable)."""
    h = np.asarray(seed * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of the hash
        for k in keys:
            h = (h ^ np.asarray(k, dtype=np.int64).astype(np.uint64)) * np.uint64(
                0xBF58476D1CE4E5B9
            )
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def blink_closure(frames: np.ndarray, fps: float, seed: int, every_s: float = 3.0) -> np.ndarray:
    """Lid closure in [0, 1] at absolute ``frames``: one blink per block of ``every_s`` seconds
    (skipped in 10 % of blocks), at a seeded time inside it."""
    frames = np.asarray(frames, dtype=np.int64)
    closure = np.zeros(len(frames))
    if len(frames) == 0:
        return closure
    block = max(int(round(every_s * fps)), 8)
    for b in range(int(frames.min()) // block - 1, int(frames.max()) // block + 1):
        if hash01(seed, b, 1) > 1.0 - SKIP:
            continue
        onset = b * block + int(hash01(seed, b, 2) * (block - len(PROFILE)))
        k = frames - onset
        inside = (k >= 0) & (k < len(PROFILE))
        closure[inside] = np.maximum(closure[inside], PROFILE[k[inside]])
    return closure


def move_lids(poses: np.ndarray, reference: np.ndarray, closure: np.ndarray) -> None:
    """Close the upper lids of (T, 134, ≥2) ``poses`` onto the lower lids, in place.

    Each upper lid point moves down by ``CLOSURE × closure`` of the reference's lid gap, so
    a negative ``closure`` undoes exactly what a positive one did.
    """
    amount = CLOSURE * np.clip(closure, -1.0, 1.0)  # (T,)
    for up, low in LIDS:
        gap = reference[layout.face_index(low), 1] - reference[layout.face_index(up), 1]
        poses[:, layout.face_index(up), 1] += amount * gap
