"""Motion metrics for evaluating audio-to-keypoint drivers.

All take (T, 134, 3) keypoint sequences in pixels of one frame size (512 in the reports) at
25 fps. Definitions:

* **mouth opening** — inner-lip gap over mouth width (reference mouth width), per frame;
* **lip sync r / lag** — Pearson r of generated vs reference opening, and the lag (frames,
  positive = generated late) of the best cross-correlation within ±``max_lag``;
* **lip L2** — mean Euclidean distance of the 20 lip points, in pixels, after removing each
  frame's lip-centre offset (so head motion does not count as a lip error);
* **jitter** — mean |acceleration| (second difference) of body and face points, px/frame²;
* **beat alignment** — Bailando's score: for each audio beat, exp(−d²/2σ²) with d the distance
  to the nearest motion beat (local minimum of the mean keypoint speed), σ = ``sigma_frames``;
* **diversity** — mean pairwise distance between sequences' head-and-body motion (each
  sequence minus its first frame, divided by the face width), over all pairs.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import argrelextrema

from mmgt.drivers import rig
from mmgt.keypoints import layout

MOTION_POINTS = np.concatenate([layout.BODY[:8], layout.FACE])


def mouth_opening(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(T,) inner-lip gap over the reference mouth width."""
    up = layout.face_index(np.array([61, 62, 63]))
    low = layout.face_index(np.array([67, 66, 65]))
    gap = (points[:, low, 1] - points[:, up, 1]).mean(1)
    return gap / rig.mouth_width(reference)


def lip_sync(generated: np.ndarray, target: np.ndarray, max_lag: int = 5) -> dict[str, float]:
    """Pearson r at lag 0, the best lag within ±max_lag, and r at that lag."""
    a, b = np.asarray(generated, np.float64), np.asarray(target, np.float64)
    if a.std() < 1e-9 or b.std() < 1e-9:
        return {"r": 0.0, "lag": 0.0, "r_at_lag": 0.0}
    best, best_lag = -2.0, 0
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[lag:], b[: len(b) - lag]) if lag >= 0 else (a[:lag], b[-lag:])
        if len(x) > 2 and x.std() > 1e-9 and y.std() > 1e-9:
            r = float(np.corrcoef(x, y)[0, 1])
            if r > best:
                best, best_lag = r, lag
    return {"r": float(np.corrcoef(a, b)[0, 1]), "lag": float(best_lag), "r_at_lag": best}


def lip_l2(generated: np.ndarray, target: np.ndarray) -> float:
    """Mean lip-point distance (pixels) with each frame's lip centre aligned."""
    g, t = generated[:, layout.LIPS, :2], target[:, layout.LIPS, :2]
    g = g - g.mean(1, keepdims=True)
    t = t - t.mean(1, keepdims=True)
    return float(np.linalg.norm(g - t, axis=-1).mean())


def jitter(points: np.ndarray) -> float:
    """Mean |acceleration| of body and face points (pixels per frame²)."""
    p = points[:, MOTION_POINTS, :2]
    if len(p) < 3:
        return 0.0
    acc = p[2:] - 2 * p[1:-1] + p[:-2]
    return float(np.linalg.norm(acc, axis=-1).mean())


def motion_beats(points: np.ndarray, order: int = 2) -> np.ndarray:
    """Frames where the mean keypoint speed has a local minimum (motion beats)."""
    p = points[:, MOTION_POINTS, :2]
    if len(p) < 2 * order + 1:
        return np.zeros(0, int)
    speed = np.linalg.norm(np.gradient(p, axis=0), axis=-1).mean(1)  # central differences
    return argrelextrema(speed, np.less, order=order)[0]


def beat_alignment(points: np.ndarray, audio_beats: np.ndarray, sigma_frames: float = 3.0) -> float:
    """Bailando's beat-alignment score in [0, 1] (higher: motion beats sit on audio beats)."""
    mb = motion_beats(points)
    if len(audio_beats) == 0 or len(mb) == 0:
        return 0.0
    d = np.abs(np.asarray(audio_beats)[:, None] - mb[None, :]).min(1)
    return float(np.exp(-(d**2) / (2 * sigma_frames**2)).mean())


def diversity(sequences: list[np.ndarray], references: list[np.ndarray]) -> float:
    """Mean pairwise distance of the sequences' motion, in face widths per frame and point."""
    feats = []
    n = min(len(s) for s in sequences)
    for seq, ref in zip(sequences, references, strict=True):
        p = seq[:n, MOTION_POINTS, :2]
        feats.append(((p - p[:1]) / rig.face_width(ref)).reshape(n, -1))
    dists = [
        float(np.linalg.norm(a - b, axis=-1).mean() / np.sqrt(len(MOTION_POINTS)))
        for i, a in enumerate(feats)
        for b in feats[i + 1 :]
    ]
    return float(np.mean(dists)) if dists else 0.0
