"""The procedural driver: hand-written rules from the light audio features to keypoints.

It is the baseline every learned driver must beat. From each frame's features (and 4.6 s of
look-behind, :attr:`ProceduralDriver.context_frames`) it derives:

* **level** — quiet recordings are raised to a normal speech level before any rule reads them:
  the loudest frame of the last ``level_window_s`` seconds (this one included) is brought up to
  ``level_target_db`` (at most ``max_boost_db``), but never so far that the quietest 10 % (the
  background) would rise above ``level_floor_db``, so noise and pauses stay calm. No frame is
  raised above the target, so the first syllable after a long pause is not exaggerated, and
  recordings at a normal level are not changed;
* **mouth and jaw** — opening from the loudness of the voiced band (250–3000 Hz), reduced on
  fricatives (high-band energy); width from the voiced band's spectral balance (spread for
  bright vowels, rounded for dark ones). The lower lip and jaw carry ¾ of the opening, the upper
  lip ¼. Silence closes the mouth;
* **head** — slow sway and roll (a sum of incommensurate sines, larger while speaking) plus a
  nod on each stressed syllable (a sharp rise in loudness);
* **beat gestures** — on strong stresses a wrist (and its hand and elbow) rises and settles,
  alternating sides by a hash of the frame index;
* **blinks** every few seconds and **breathing** (shoulders, arms, head) all the time.

Everything is a deterministic function of the seed, the absolute frame index and the features,
so a stream generated window by window equals the whole clip generated at once as long as each
window carries ``context_frames`` frames of look-behind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmgt.audio import features as light
from mmgt.drivers import rig
from mmgt.drivers.ambient import blink_closure, hash01
from mmgt.keypoints import layout
from mmgt.types import FPS, AudioFeatures, KeypointSeq

_DB = 10.0 / np.log(10.0)  # natural log of power → dB


def _band_mask(lo_hz: float, hi_hz: float) -> np.ndarray:
    edges = light.mel_to_hz(
        np.linspace(light.hz_to_mel(light.FMIN), light.hz_to_mel(light.FMAX), light.N_MELS + 2)
    )
    centers = edges[1:-1]
    return (centers >= lo_hz) & (centers < hi_hz)


VOICED, HIGH, LOW = _band_mask(250, 3000), _band_mask(4000, 8000), _band_mask(100, 1000)
_CENTERS_HZ = light.mel_to_hz(
    np.linspace(light.hz_to_mel(light.FMIN), light.hz_to_mel(light.FMAX), light.N_MELS + 2)
)[1:-1]
_I_ENERGY = light.FEATURE_NAMES.index("log_energy")
_RULES_REACH = 16  # frames of look-behind the rules' filters need (stress, nods, gestures)


@dataclass(frozen=True)
class ProceduralConfig:
    """Rule settings. Lengths are in face widths (jaw end to jaw end), levels in dBFS."""

    seed: int = 0
    silence_db: float = -50.0  # frame loudness at and below which the avatar is silent
    speech_db: float = -25.0  # loudness of full activity
    voiced_floor_db: float = -25.0  # voiced-band level of a closed mouth …
    voiced_range_db: float = 30.0  # … and the range over which it opens fully
    max_gap: float = 0.38  # widest inner-lip opening, in mouth widths
    lip_spread: float = 0.10  # width change for the brightest/darkest vowels
    head_shift: float = 0.025
    head_roll_deg: float = 1.8
    nod: float = 0.05
    stress_db: float = 6.0  # loudness rise that counts as a stressed syllable
    level_target_db: float = -14.0  # loudest frame of a few seconds of normal speech
    level_window_s: float = 4.0  # how far back the recording's level is measured
    max_boost_db: float = 30.0  # 0 turns the level correction off
    level_floor_db: float = -45.0  # highest level a boost may lift the background to (steady
    # noise starts to open the mouth at about −35 dBFS)
    gesture: float = 0.35  # wrist lift of a beat gesture
    gesture_stress_db: float = 10.0
    breath: float = 0.01
    breath_period_s: float = 4.2
    blink_every_s: float = 3.0  # one blink per block of this length (with probability 0.9)


def _running_percentiles(x: np.ndarray, n: int, qs: tuple[float, ...]) -> list[np.ndarray]:
    """For each q in ``qs``: (T,) q-th percentile (numpy's linear rule) of
    x[max(0, i − n + 1) : i + 1] for each i (the windows are sorted once)."""
    pad = np.concatenate([np.full(n - 1, -np.inf), x])  # sorts before every real value
    rows = np.sort(sliding_window_view(pad, n), axis=1)  # (T, n)
    count = np.minimum(np.arange(1, len(x) + 1), n)  # real values in each row
    at = np.arange(len(x))
    out = []
    for q in qs:
        pos = (n - count) + q / 100.0 * (count - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        out.append(rows[at, lo] + (pos - lo) * (rows[at, hi] - rows[at, lo]))
    return out


def _fir(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal FIR: y[i] = Σ_j kernel[j] · x[i − j], edge-padded at the start."""
    pad = np.concatenate([np.full(len(kernel) - 1, x[0]), x])
    return np.convolve(pad, kernel, mode="valid")


class ProceduralDriver:
    """Rule-based audio-to-keypoint driver (see the module docstring)."""

    name = "procedural"
    feature_kind = light.KIND

    def __init__(self, config: ProceduralConfig | None = None) -> None:
        self.config = config or ProceduralConfig()
        self.level_frames = max(1, round(self.config.level_window_s * FPS))
        # Look-behind that makes windowed generation equal whole-clip generation: the level
        # window plus the reach of the rules' filters.
        self.context_frames = self.level_frames - 1 + _RULES_REACH

    # -- audio → control signals ---------------------------------------------------------
    def signals(self, features: AudioFeatures) -> dict[str, np.ndarray]:
        """Per-frame control signals in [0, 1] (or [−1, 1]) from light features."""
        cfg = self.config
        if features.kind != light.KIND:
            raise ValueError(
                f"the procedural driver needs {light.KIND} features, got {features.kind}"
            )
        v = features.values.astype(np.float64)
        mel = np.exp(v[:, : light.N_MELS])
        loud = v[:, _I_ENERGY] * _DB
        boost = self.level_boost(loud)
        loud = loud + boost
        activity = np.clip((loud - cfg.silence_db) / (cfg.speech_db - cfg.silence_db), 0, 1)
        voiced_db = 10 * np.log10(mel[:, VOICED].mean(1) + 1e-12) + boost
        tilt = 10 * np.log10(mel[:, HIGH].mean(1) + 1e-12) - 10 * np.log10(
            mel[:, LOW].mean(1) + 1e-12
        )
        fricative = np.clip((tilt + 12.0) / 12.0, 0, 1)
        opening = np.clip((voiced_db - cfg.voiced_floor_db) / cfg.voiced_range_db, 0, 1)
        opening = opening * (1 - 0.6 * fricative) * np.sqrt(activity)
        opening = _fir(opening, np.array([0.6, 0.28, 0.12]))
        # Brightness of the voiced band: −1 dark (rounded lips) … +1 bright (spread lips).
        w = mel[:, VOICED]
        centroid = (w * np.log2(_CENTERS_HZ[VOICED])).sum(1) / (w.sum(1) + 1e-12)
        brightness = np.tanh((centroid - np.log2(900.0)) / 0.8) * (opening > 0.05)
        # Stress: loudness rise against the previous three frames.
        prev = np.stack([np.roll(loud, k) for k in (1, 2, 3)], 1)
        prev[:3] = loud[0]
        rise = np.maximum(loud - prev.max(1), 0) * activity
        engagement = _fir(activity, np.full(12, 1 / 12))
        return {
            "activity": activity,
            "opening": opening,
            "brightness": _fir(brightness, np.array([0.5, 0.3, 0.2])),
            "rise": rise,
            "engagement": engagement,
        }

    def level_boost(self, loud: np.ndarray) -> np.ndarray:
        """(T,) dB to add to frame loudness ``loud`` (T,) so that quiet speech reads as normal.

        Causal: frame ``i`` looks at frames ``i − level_frames + 1 … i`` only (fewer at the
        start of a stream)."""
        cfg = self.config
        if cfg.max_boost_db <= 0 or len(loud) == 0:
            return np.zeros(len(loud))
        peak, floor = _running_percentiles(loud, self.level_frames, (100.0, 10.0))
        room = cfg.level_floor_db - floor  # keeps the background below where it would speak
        return np.clip(np.minimum(cfg.level_target_db - peak, room), 0.0, cfg.max_boost_db)

    # -- generation -----------------------------------------------------------------------
    def generate(
        self,
        features: AudioFeatures,
        reference_pose: np.ndarray,
        committed: KeypointSeq | None = None,
        *,
        frame_size: int = layout.OFFICIAL_FRAME,
    ) -> KeypointSeq:
        """Keypoints for the frames of ``features`` after ``committed`` (see ``Driver``)."""
        ref = np.asarray(reference_pose, dtype=np.float32)
        if ref.shape != (layout.NUM_KEYPOINTS, 3):
            raise ValueError(f"reference_pose must be (134, 3), got {ref.shape}")
        skip = 0
        if committed is not None:
            if committed.start_frame != features.start_frame:
                raise ValueError("committed frames must start where the feature window starts")
            skip = len(committed)
        if len(features) == 0:
            return KeypointSeq(
                np.zeros((0, 134, 3), np.float32), frame_size, features.fps, features.start_frame
            )
        curves = self.curves(features)
        poses = rig.pose_sequence(ref, curves)
        return KeypointSeq(poses[skip:], frame_size, features.fps, features.start_frame + skip)

    def curves(self, features: AudioFeatures) -> rig.RigCurves:
        """Rig control curves for every frame of ``features``."""
        cfg = self.config
        sig = self.signals(features)
        frames = features.start_frame + np.arange(len(features))
        motion = self._motion(sig, frames, features.fps)
        head_x, head_y, roll = motion["head"]
        return rig.RigCurves(
            opening=sig["opening"] * cfg.max_gap,
            spread=cfg.lip_spread * sig["brightness"],
            press=np.zeros(len(frames)),
            blink=motion["blink"],
            head_x=head_x,
            head_y=head_y,
            head_roll=roll,
            lift_left=motion["lift"][0],
            lift_right=motion["lift"][1],
            breath=motion["breath"],
        )

    def _motion(self, sig: dict[str, np.ndarray], frames: np.ndarray, fps: float) -> dict:
        cfg, seed = self.config, self.config.seed
        t = frames / fps
        phase = 2 * np.pi * hash01(seed, np.arange(9))
        sway = 0.35 + 0.65 * sig["engagement"]
        sines = [
            np.sin(2 * np.pi * f * t + p)
            for f, p in zip((0.11, 0.23, 0.37), phase[:3], strict=True)
        ]
        head_x = cfg.head_shift * sway * (0.6 * sines[0] + 0.4 * sines[1])
        head_y = cfg.head_shift * 0.5 * sway * np.sin(2 * np.pi * 0.17 * t + phase[3])
        roll = (
            np.deg2rad(cfg.head_roll_deg)
            * sway
            * (0.7 * np.sin(2 * np.pi * 0.09 * t + phase[4]) + 0.3 * sines[2])
        )
        stress = np.clip((sig["rise"] - cfg.stress_db) / 10.0, 0, 1)
        nod_kernel = np.sin(np.pi * np.arange(10) / 10) ** 2
        nod = cfg.nod * _fir(stress, nod_kernel)
        beat = np.clip((sig["rise"] - cfg.gesture_stress_db) / 10.0, 0, 1)
        side = hash01(seed, frames, 7) < 0.5  # which wrist a beat starting here lifts
        gesture_kernel = np.sin(np.pi * np.arange(14) / 14) ** 1.5
        lift_l = cfg.gesture * _fir(beat * side, gesture_kernel)
        lift_r = cfg.gesture * _fir(beat * ~side, gesture_kernel)
        breath = cfg.breath * np.sin(2 * np.pi * t / cfg.breath_period_s + phase[5])
        return {
            "head": (head_x, head_y + nod + 0.5 * breath, roll),
            "lift": (np.clip(lift_l, 0, cfg.gesture), np.clip(lift_r, 0, cfg.gesture)),
            "breath": breath,
            "blink": self._blinks(frames, fps),
        }

    def _blinks(self, frames: np.ndarray, fps: float) -> np.ndarray:
        """Blink closure in [0, 1]: one blink per block, at a seeded time inside it."""
        return blink_closure(frames, fps, self.config.seed, self.config.blink_every_s)
