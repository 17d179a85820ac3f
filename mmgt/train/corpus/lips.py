"""Lip and jaw curves from phone timings: viseme targets blended by dominance (Cohen–Massaro).

Each phone has targets for the rig's ``opening`` (inner-lip gap in mouth widths), ``spread``
(lip width change) and ``press`` (bilabial closure), plus a dominance per channel: how strongly
it imposes that target on its neighbours. A phone's dominance is a plateau over its (shifted)
interval with exponential tails, longer before it (anticipation) than after (carry-over), and
short for lip closures and pauses (they are strong but local).
Each channel is the dominance-weighted mean of the targets, evaluated on a 5 ms grid. Then:

* the whole lip track leads the audio by ``lead_s`` (lips move before the sound is heard);
* bilabial closures (P, B, M) and pauses are enforced: the opening is gated to 0 over the core
  of every bilabial and every pause, with short ramps (so blends cannot leave a gap where the
  lips must meet);
* diphthongs move between two targets (AY: AA→IY, OW: AO→UW, …);
* vowel openings scale with the local loudness of the vowel (louder → wider).

Frames are then taken at 25 fps (frame i = samples [640 i, 640 (i + 1))): the opening at the
frame centre, except that a frame containing a closure core takes the minimum over the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmgt.train.corpus.align import SILENCE, Segment

GRID_S = 0.005
# phone → (opening, spread, press, opening dominance, spread dominance)
_VOWEL = 1.0
VISEMES: dict[str, tuple[float, float, float, float, float]] = {
    # open vowels
    "AA": (0.45, 0.00, 0, _VOWEL, 0.6), "AE": (0.40, 0.06, 0, _VOWEL, 0.6),
    "AH": (0.34, 0.00, 0, _VOWEL, 0.4), "AO": (0.38, -0.06, 0, _VOWEL, 0.8),
    # mid vowels
    "EH": (0.30, 0.05, 0, _VOWEL, 0.6), "ER": (0.22, -0.05, 0, _VOWEL, 0.8),
    "UH": (0.20, -0.08, 0, _VOWEL, 0.9),
    # close vowels
    "IY": (0.13, 0.10, 0, _VOWEL, 1.0), "IH": (0.16, 0.06, 0, _VOWEL, 0.8),
    "UW": (0.13, -0.14, 0, _VOWEL, 1.2),
    # consonants
    "P": (0.0, 0.0, 1.0, 2.0, 0.2), "B": (0.0, 0.0, 1.0, 2.0, 0.2), "M": (0.0, 0.0, 1.0, 2.0, 0.2),
    "F": (0.03, -0.02, 0.25, 1.5, 0.3), "V": (0.03, -0.02, 0.25, 1.5, 0.3),
    "W": (0.06, -0.15, 0, 0.8, 1.5), "R": (0.10, -0.07, 0, 0.5, 1.0),
    "SH": (0.08, -0.07, 0, 0.6, 1.0), "ZH": (0.08, -0.07, 0, 0.6, 1.0),
    "CH": (0.06, -0.06, 0, 0.7, 1.0), "JH": (0.06, -0.06, 0, 0.7, 1.0),
    "TH": (0.08, 0.00, 0, 0.6, 0.2), "DH": (0.08, 0.00, 0, 0.4, 0.2),
    "S": (0.05, 0.03, 0, 0.5, 0.3), "Z": (0.05, 0.03, 0, 0.4, 0.3),
    "T": (0.10, 0.00, 0, 0.3, 0.1), "D": (0.10, 0.00, 0, 0.25, 0.1),
    "N": (0.10, 0.00, 0, 0.25, 0.1), "L": (0.13, 0.00, 0, 0.25, 0.1),
    "K": (0.13, 0.00, 0, 0.25, 0.1), "G": (0.13, 0.00, 0, 0.25, 0.1),
    "NG": (0.13, 0.00, 0, 0.25, 0.1), "Y": (0.08, 0.06, 0, 0.4, 0.6),
    "HH": (0.22, 0.00, 0, 0.1, 0.05),
    SILENCE: (0.0, 0.0, 0, 1.0, 0.4),
}  # fmt: skip
# Phones whose influence on neighbours is short (tails × 0.4): lip closures and pauses.
SHORT_TAILS = frozenset({"P", "B", "M", "F", "V", SILENCE})
DIPHTHONGS = {"AY": ("AA", "IY"), "AW": ("AA", "UW"), "OY": ("AO", "IY"), "EY": ("EH", "IY"),
              "OW": ("AO", "UW")}  # fmt: skip
VOWELS = frozenset({"AA", "AE", "AH", "AO", "EH", "ER", "UH", "IY", "IH", "UW", *DIPHTHONGS})
BILABIALS = frozenset({"P", "B", "M"})


@dataclass(frozen=True)
class LipConfig:
    """Coarticulation settings (seconds)."""

    lead_s: float = 0.02  # lips lead the audio
    anticipation_s: float = 0.06  # dominance tail before a phone
    carryover_s: float = 0.04  # … and after it
    min_closure_s: float = 0.03  # core of a bilabial that is fully closed
    pause_close_s: float = 0.12  # silences longer than this close fully in their core
    loudness_gain: float = 0.25  # vowel opening × (1 + gain × loudness z-score, clipped)


def _expand(phones: list[Segment], scale: np.ndarray) -> list[tuple[str, float, float, float]]:
    """(viseme, start, end, opening scale); diphthongs split into two targets (55 % / 45 %)."""
    out = []
    for p, k in zip(phones, scale, strict=True):
        if p.label in DIPHTHONGS:
            a, b = DIPHTHONGS[p.label]
            mid = p.start + 0.55 * (p.end - p.start)
            out += [(a, p.start, mid, k), (b, mid, p.end, k)]
        else:
            out.append((p.label if p.label in VISEMES else SILENCE, p.start, p.end, k))
    return out


def _loudness(phones: list[Segment], energy_db: np.ndarray, hop_s: float) -> np.ndarray:
    """Per-phone loudness z-score among vowels (0 for other phones)."""
    peak = np.zeros(len(phones))
    for i, p in enumerate(phones):
        seg = energy_db[int(p.start / hop_s) : max(int(p.end / hop_s), int(p.start / hop_s) + 1)]
        peak[i] = seg.max() if len(seg) else -100.0
    vowel = np.array([p.label in VOWELS for p in phones])
    z = np.zeros(len(phones))
    if vowel.sum() >= 2:
        v = peak[vowel]
        z[vowel] = (v - v.mean()) / (v.std() + 3.0)
    return z


def lip_curves(
    phones: list[Segment],
    frames: int,
    fps: float,
    energy_db: np.ndarray | None = None,
    energy_hop_s: float = 0.01,
    config: LipConfig | None = None,
) -> dict[str, np.ndarray]:
    """``opening``, ``spread`` and ``press`` curves, (frames,) each, at ``fps``."""
    cfg = config or LipConfig()
    duration = frames / fps
    grid = np.arange(0.0, duration + GRID_S, GRID_S)
    if not phones:
        zero = np.zeros(frames)
        return {"opening": zero, "spread": zero.copy(), "press": zero.copy()}
    loud = (
        np.zeros(len(phones)) if energy_db is None else _loudness(phones, energy_db, energy_hop_s)
    )
    segs = _expand(phones, 1 + cfg.loudness_gain * np.clip(loud, -1.5, 1.5))
    starts = np.array([s[1] for s in segs]) - cfg.lead_s
    ends = np.array([s[2] for s in segs]) - cfg.lead_s
    # Distance outside each interval, separately before (anticipation) and after (carry-over).
    tails = np.array([0.4 if s[0] in SHORT_TAILS else 1.0 for s in segs])
    before = np.clip(starts[None, :] - grid[:, None], 0, None)  # (G, S)
    after = np.clip(grid[:, None] - ends[None, :], 0, None)
    shape = np.exp(-(before / cfg.anticipation_s + after / cfg.carryover_s) / tails[None, :])
    table = np.array([VISEMES[s[0]] for s in segs])  # (S, 5)
    vowel = np.array([s[0] in VOWELS for s in segs])
    open_t = table[:, 0] * np.where(vowel, [s[3] for s in segs], 1.0)
    channels = {}
    for name, target, dom in (
        ("opening", open_t, table[:, 3]),
        ("spread", table[:, 1], table[:, 4]),
        ("press", table[:, 2], table[:, 3]),
    ):
        w = shape * dom[None, :] + 1e-9
        channels[name] = (w @ target) / w.sum(1)
    # Closure gates: bilabial cores and pause cores close the lips completely, with linear ramps
    # (30 ms into a bilabial, 80 ms into a pause) so the lips close at a physical speed.
    core = np.zeros(len(grid), bool)
    gate = np.zeros(len(grid))
    for (label, *_), s, e in zip(segs, starts, ends, strict=True):
        if label in BILABIALS:
            pad, ramp = max(0.0, (e - s - cfg.min_closure_s) / 2), 0.03
        elif label == SILENCE and e - s >= cfg.pause_close_s:
            pad, ramp = 0.04, 0.08
        else:
            continue
        inside = (grid >= s + pad) & (grid <= e - pad)
        core |= inside
        dist = np.maximum(s + pad - grid, grid - (e - pad))  # < 0 inside the core
        gate = np.maximum(gate, np.clip(1 - dist / ramp, 0, 1))
    channels["opening"] *= 1 - gate
    channels["press"] = np.clip(channels["press"], 0, 1)
    return _to_frames(grid, channels, core, frames, fps)


def _to_frames(
    grid: np.ndarray, channels: dict[str, np.ndarray], core: np.ndarray, frames: int, fps: float
) -> dict[str, np.ndarray]:
    centres = (np.arange(frames) + 0.5) / fps
    out = {name: np.interp(centres, grid, v) for name, v in channels.items()}
    bins = np.minimum((grid * fps).astype(int), frames - 1)
    closed = np.zeros(frames, bool)
    closed[bins[core]] = True
    if closed.any():
        lowest = np.full(frames, np.inf)
        np.minimum.at(lowest, bins, channels["opening"])
        out["opening"][closed] = lowest[closed]
        highest = np.zeros(frames)
        np.maximum.at(highest, bins, channels["press"])
        out["press"][closed] = highest[closed]
    out["opening"] = np.clip(out["opening"], 0, None)
    return out
