"""Ambient motion: blinks, head sway and breathing, seeded and independent of the audio.

None of these can be predicted from speech. A few-step diffusion sampler returns close to the
conditional mean of its training motion, in which blinks and sway at random times average out:
the shipped SMGA model never blinks (its lid gap stays above 85 % of the median) and moves its
head a third as much as the corpus it learned from. The SMGA driver therefore lays this motion
over the model's output, and the procedural driver draws its blinks from the same schedule.
Everything is a pure function of (seed, absolute frame index), so an offline clip and a live
stream cut into any windows move alike, and :meth:`AmbientMotion.apply` can take the motion
off again exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def face_width(reference: np.ndarray) -> float:
    """Jaw end to jaw end, in pixels (at least 8): the unit of motion amplitudes."""
    jaw = reference[layout.JAW, :2]
    return float(max(np.linalg.norm(jaw[-1] - jaw[0]), 8.0))


HEAD = np.concatenate([layout.FACE, [layout.NOSE, 14, 15, 16, 17]])  # face, nose, eyes, ears
BODY = np.concatenate([[layout.NECK, 2, 3, 4, 5, 6, 7], layout.HANDS])  # what breathing lifts


@dataclass(frozen=True)
class AmbientMotion:
    """Seeded audio-independent motion, in face widths (jaw end to jaw end) and radians.

    The head sways by a sum of incommensurate sines (shift and roll about a pivot between chin
    and neck), the chest rises and falls, and the lids blink about once per ``blink_every_s``.
    """

    seed: int = 0
    blink_every_s: float = 3.0
    sway: float = 0.035  # head shift amplitude
    roll_deg: float = 2.5
    breath: float = 0.005
    breath_period_s: float = 4.2

    def curves(self, frames: np.ndarray, fps: float) -> dict[str, np.ndarray]:
        """Per-frame ``blink``, ``head_x``, ``head_y``, ``roll`` and ``breath`` at ``frames``."""
        frames = np.asarray(frames, dtype=np.int64)
        t = frames / fps
        phase = 2 * np.pi * hash01(self.seed, np.arange(6), 11)  # (6,)
        freqs = (0.11, 0.23, 0.37)
        wave = [np.sin(2 * np.pi * f * t + p) for f, p in zip(freqs, phase[:3], strict=True)]
        roll = np.deg2rad(self.roll_deg) * (
            0.7 * np.sin(2 * np.pi * 0.09 * t + phase[3]) + 0.3 * wave[2]
        )
        return {
            "blink": blink_closure(frames, fps, self.seed, self.blink_every_s),
            "head_x": self.sway * (0.6 * wave[0] + 0.4 * wave[1]),
            "head_y": 0.5 * self.sway * np.sin(2 * np.pi * 0.17 * t + phase[4]),
            "roll": roll,
            "breath": self.breath * np.sin(2 * np.pi * t / self.breath_period_s + phase[5]),
        }

    def apply(
        self,
        poses: np.ndarray,
        reference: np.ndarray,
        start: int,
        fps: float,
        undo: bool = False,
    ) -> None:
        """Lay the motion over (T, 134, ≥2) ``poses`` whose first frame has absolute index
        ``start`` (``undo``: take it off again), in place. Lengths scale with the reference."""
        if len(poses) == 0:
            return
        c = self.curves(start + np.arange(len(poses)), fps)
        face_w = face_width(reference)
        pivot = head_pivot(reference)
        # The head follows half of the chest's rise.
        head_y = c["head_y"] - 0.5 * c["breath"]
        shift = face_w * np.stack([c["head_x"], head_y], 1)[:, None, :]  # (T, 1, 2)
        lift = face_w * c["breath"][:, None]  # (T, 1)
        if undo:
            poses[:, BODY, 1] += lift
            rotate_about(poses, HEAD, pivot, -c["roll"], -shift, shift_first=True)
            move_lids(poses, reference, -c["blink"])
        else:
            move_lids(poses, reference, c["blink"])
            rotate_about(poses, HEAD, pivot, c["roll"], shift)
            poses[:, BODY, 1] -= lift


def head_pivot(reference: np.ndarray) -> np.ndarray:
    """(2,) the point the head rolls about: between the chin and the neck."""
    return 0.5 * (reference[layout.face_index(8), :2] + reference[layout.NECK, :2])


def rotate_about(
    poses: np.ndarray,
    index: np.ndarray,
    pivot: np.ndarray,
    angle: np.ndarray,
    shift: np.ndarray,
    shift_first: bool = False,
) -> None:
    """Rotate ``poses[:, index]`` by (T,) ``angle`` about ``pivot`` and add (T, 1, 2) ``shift``
    (before the rotation when ``shift_first``, which inverts the other order), in place."""
    pts = poses[:, index, :2]  # (T, N, 2) copy
    if shift_first:
        pts = pts + shift
    rel = pts - pivot
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]  # (T, 1)
    out = np.stack(
        [
            pivot[0] + cos * rel[..., 0] - sin * rel[..., 1],
            pivot[1] + sin * rel[..., 0] + cos * rel[..., 1],
        ],
        -1,
    )
    if not shift_first:
        out = out + shift
    poses[:, index, :2] = out
