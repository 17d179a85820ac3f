"""Ground-truth rig curves of one clip: phone-accurate lips + prosody-driven head, hands, lids.

* **lips/jaw**: :func:`mmgt.train.corpus.lips.lip_curves` from the phone alignment;
* **head**: slow seeded sway (larger while speaking, calm in pauses); a nod on every pitch
  accent (down and back over ~0.4 s, starting just before the accented vowel) with a small
  seeded turn/roll; the head rises a little with pitch; a tilt where a phrase ends without the
  usual fall (questions);
* **beat gestures**: on strong accents a wrist rises to its apex at the accented vowel's onset
  and settles; beats close together within a phrase hold the hand up between them;
* **blinks**: a seeded Poisson process (``blinks_per_min``) plus blinks at 40 % of phrase ends;
* **breathing**: inhalation during pauses, slow exhalation while speaking, a slow idle cycle.

:class:`MotionStyle` (seeded per clip) varies amplitudes and the gesturing hand between
speakers. Curves are (T,) arrays at 25 fps with T = ceil(n_samples / 640).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mmgt.drivers.rig import RigCurves
from mmgt.train.corpus.align import SILENCE, Alignment
from mmgt.train.corpus.lips import LipConfig, lip_curves
from mmgt.train.corpus.prosody import Prosody, accents, phrases

BLINK = np.array([0.35, 0.85, 1.0, 0.75, 0.35, 0.1])  # closure per frame at 25 fps


@dataclass(frozen=True)
class MotionStyle:
    """A speaker's motion style. Lengths in face widths, angles in radians."""

    sway: float = 0.025
    roll: float = 0.03
    nod: float = 0.035
    turn: float = 0.015
    pitch_follow: float = 0.006  # head rise per semitone-z of f0
    gesture: float = 0.3
    hand: str = "alternate"  # left | right | both | alternate | none
    blinks_per_min: float = 11.0  # background rate; phrase ends add more (~17/min in all)
    breath: float = 0.012
    breath_period_s: float = 4.2

    @classmethod
    def sample(cls, rng: np.random.Generator) -> MotionStyle:
        hand = str(
            rng.choice(
                ["left", "right", "both", "alternate", "none"], p=[0.25, 0.3, 0.1, 0.2, 0.15]
            )
        )
        return cls(
            sway=float(rng.uniform(0.012, 0.035)),
            roll=float(rng.uniform(0.015, 0.045)),
            nod=float(rng.uniform(0.02, 0.05)),
            turn=float(rng.uniform(0.005, 0.025)),
            pitch_follow=float(rng.uniform(0.0, 0.01)),
            gesture=float(rng.uniform(0.15, 0.45)),
            hand=hand,
            blinks_per_min=float(rng.uniform(7, 15)),
            breath=float(rng.uniform(0.008, 0.016)),
            breath_period_s=float(rng.uniform(3.5, 5.0)),
        )

    def as_dict(self) -> dict:
        return asdict(self)


def frame_count(n_samples: int, sample_rate: int = 16000, fps: float = 25.0) -> int:
    """T = ceil(n_samples / samples_per_frame): frame i ↔ samples [640 i, 640 (i + 1))."""
    return int(math.ceil(n_samples / (sample_rate / fps)))


def _bump(t: np.ndarray, start: float, length: float) -> np.ndarray:
    u = (t - start) / length
    return np.where((u > 0) & (u < 1), np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)


def _speaking(alignment: Alignment, t: np.ndarray) -> np.ndarray:
    on = np.zeros(len(t))
    for p in alignment.phones:
        if p.label != SILENCE:
            on[(t >= p.start) & (t < p.end)] = 1.0
    return on


def _smooth(x: np.ndarray, tau_frames: float) -> np.ndarray:
    """Forward-backward one-pole smoothing (zero phase)."""
    a = math.exp(-1 / max(tau_frames, 1e-3))
    y = np.array(x, dtype=np.float64)
    for seq in (y, y[::-1]):
        for i in range(1, len(seq)):
            seq[i] = a * seq[i - 1] + (1 - a) * seq[i]
    return y


def motion_curves(
    alignment: Alignment,
    prosody: Prosody,
    frames: int,
    *,
    seed: int,
    style: MotionStyle | None = None,
    fps: float = 25.0,
    lips: LipConfig | None = None,
) -> RigCurves:
    """All rig curves of one clip (module docstring)."""
    rng = np.random.default_rng(seed)
    style = style or MotionStyle.sample(rng)
    t = (np.arange(frames) + 0.5) / fps
    lip = lip_curves(alignment.phones, frames, fps, prosody.energy_db, prosody.hop_s, lips)
    speaking = _speaking(alignment, t)
    engaged = np.clip(_smooth(speaking, 0.6 * fps) * 1.6, 0, 1)
    spans = phrases(alignment)
    acc = accents(alignment, prosody)

    # Head: sway (calm in pauses), nods and turns on accents, pitch following, question tilt.
    ph = rng.uniform(0, 2 * np.pi, 6)
    level = 0.4 + 0.6 * engaged
    head_x = style.sway * level * (0.6 * np.sin(0.7 * t + ph[0]) + 0.4 * np.sin(1.45 * t + ph[1]))
    head_y = 0.5 * style.sway * level * np.sin(1.07 * t + ph[2])
    roll = style.roll * level * (0.7 * np.sin(0.57 * t + ph[3]) + 0.3 * np.sin(2.3 * t + ph[4]))
    for a in acc:
        nod = _bump(t, a.time - 0.1, 0.4)
        head_y += style.nod * a.strength * nod
        side = rng.choice([-1.0, 1.0])
        head_x += side * style.turn * a.strength * _bump(t, a.time - 0.15, 0.7)
        roll += side * 0.3 * style.roll * a.strength * _bump(t, a.time - 0.15, 0.7)
    f0 = np.interp(t, np.arange(len(prosody.f0_st)) * prosody.hop_s, np.nan_to_num(prosody.f0_st))
    head_y -= style.pitch_follow * _smooth(f0, 0.15 * fps) / 3.0 * engaged
    for _start, end in spans:  # phrase ends that do not fall (questions): tilt and lift
        rise = _final_rise(prosody, end)
        if rise is not None and rise > -2.0:
            tilt = min((rise + 2.0) / 3.0, 1.0) * _bump(t, end - 0.5, 1.4)
            roll += rng.choice([-1.0, 1.0]) * 1.5 * style.roll * tilt
            head_y -= 0.5 * style.nod * tilt

    # Beat gestures: lift to the apex at the accented vowel, hold between close beats.
    lifts = [np.zeros(frames), np.zeros(frames)]  # person's left, right
    sides = {"left": [0], "right": [1], "both": [0, 1], "none": []}
    strong = [a for a in acc if a.strength >= 0.35]
    for k, a in enumerate(strong):
        hands = sides.get(style.hand, [k % 2])
        beat = np.where(t < a.time, _bump(t, a.time - 0.3, 0.6), 0.0)
        fall = np.exp(-np.clip(t - a.time, 0, None) / 0.2) * (t >= a.time)
        shape = style.gesture * a.strength * np.maximum(beat, fall)
        nxt = strong[k + 1] if k + 1 < len(strong) else None
        if nxt is not None and nxt.phrase == a.phrase and nxt.time - a.time < 1.2:
            held = (t >= a.time) & (t < nxt.time)
            shape[held] = np.maximum(shape[held], 0.5 * style.gesture * a.strength)
        for h in hands:
            lifts[h] = np.maximum(lifts[h], shape)
    lifts = [np.clip(_smooth(v, 0.06 * fps), 0, 0.5) for v in lifts]

    return RigCurves(
        opening=lip["opening"],
        spread=lip["spread"],
        press=lip["press"],
        blink=_blinks(rng, t, spans, style.blinks_per_min, fps),
        head_x=head_x,
        head_y=head_y,
        head_roll=roll,
        lift_left=lifts[0],
        lift_right=lifts[1],
        breath=_breath(rng, t, speaking, style, fps),
    )


def _final_rise(prosody: Prosody, end: float) -> float | None:
    """f0 of a phrase's last voiced frames minus that of the 0.6 s before (semitones).

    Measured on the TTS voices: statements fall by ~3 st (median), yes/no questions by ~1 st.
    """
    stop = int(end / prosody.hop_s)
    voiced = prosody.f0_st[max(stop - 60, 0) : stop]
    voiced = voiced[np.isfinite(voiced)]
    if len(voiced) < 8:
        return None
    return float(np.mean(voiced[-4:]) - np.mean(voiced[: len(voiced) // 2]))


def _blinks(
    rng: np.random.Generator, t: np.ndarray, spans: list, per_min: float, fps: float
) -> np.ndarray:
    duration = float(t[-1]) + 0.5 / fps if len(t) else 0.0
    gap, times = 60.0 / per_min, []
    onset = rng.uniform(0, gap)
    while onset < duration:
        times.append(onset)
        onset += rng.exponential(gap)
    times += [end + rng.uniform(0.0, 0.2) for _, end in spans if rng.random() < 0.4]
    closure = np.zeros(len(t))
    last = -np.inf
    for onset in sorted(times):
        if onset < 0 or onset > duration or onset - last < 0.8:
            continue
        last = onset
        first = int(onset * fps)
        k = np.arange(first, min(first + len(BLINK), len(t)))
        closure[k] = np.maximum(closure[k], BLINK[k - first])
    return closure


def _breath(
    rng: np.random.Generator, t: np.ndarray, speaking: np.ndarray, style: MotionStyle, fps: float
) -> np.ndarray:
    lung = np.zeros(len(t))
    level = 0.5
    up, down = math.exp(-1 / (0.5 * fps)), math.exp(-1 / (3.0 * fps))
    for i, s in enumerate(speaking):
        level = down * level if s else up * level + (1 - up) * 1.0
        lung[i] = level
    cycle = np.sin(2 * np.pi * t / style.breath_period_s + rng.uniform(0, 2 * np.pi))
    quiet = 1 - np.clip(_smooth(speaking, fps), 0, 1)
    return style.breath * (0.7 * (lung - 0.5) + 0.5 * quiet * cycle)
