"""The procedural driver: hand-written rules from the light audio features to keypoints.

It is the baseline every learned driver must beat. From each frame's features (and a few frames
of look-behind, :attr:`ProceduralDriver.context_frames`) it derives:

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

from mmgt.audio import features as light
from mmgt.keypoints import layout
from mmgt.types import AudioFeatures, KeypointSeq

_F = layout.face_index
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


@dataclass(frozen=True)
class ProceduralConfig:
    """Rule settings. Lengths are in face widths (jaw end to jaw end), levels in dBFS."""

    seed: int = 0
    silence_db: float = -50.0  # frame loudness at and below which the avatar is silent
    speech_db: float = -25.0  # loudness of full activity
    voiced_floor_db: float = -25.0  # voiced-band level of a closed mouth …
    voiced_range_db: float = 30.0  # … and the range over which it opens fully
    max_gap: float = 0.45  # widest inner-lip opening, in mouth widths
    lip_spread: float = 0.10  # width change for the brightest/darkest vowels
    head_shift: float = 0.025
    head_roll_deg: float = 1.8
    nod: float = 0.05
    stress_db: float = 6.0  # loudness rise that counts as a stressed syllable
    gesture: float = 0.35  # wrist lift of a beat gesture
    gesture_stress_db: float = 10.0
    breath: float = 0.01
    breath_period_s: float = 4.2
    blink_every_s: float = 3.0  # one blink per block of this length (with probability 0.9)


def _fir(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Causal FIR: y[i] = Σ_j kernel[j] · x[i − j], edge-padded at the start."""
    pad = np.concatenate([np.full(len(kernel) - 1, x[0]), x])
    return np.convolve(pad, kernel, mode="valid")


def _hash01(seed: int, *keys: int) -> np.ndarray:
    """Deterministic uniform [0, 1) values from integer keys (vectorised, platform-stable)."""
    h = np.asarray(seed * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
    with np.errstate(over="ignore"):  # wrap-around multiplication is the point of the hash
        for k in keys:
            h = (h ^ np.asarray(k, dtype=np.int64).astype(np.uint64)) * np.uint64(
                0xBF58476D1CE4E5B9
            )
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _gesture_scale(ref: np.ndarray, wrist: int, hand: np.ndarray) -> float:
    """Beat gestures are full-size for a visible hand, small for a wrist alone, else none."""
    if (ref[hand, 2] >= layout.VISIBILITY_THRESHOLD).sum() >= 5:
        return 1.0
    return 0.35 if ref[wrist, 2] >= layout.VISIBILITY_THRESHOLD else 0.0


class ProceduralDriver:
    """Rule-based audio-to-keypoint driver (see the module docstring)."""

    name = "procedural"
    feature_kind = light.KIND
    context_frames = 16  # look-behind that makes windowed generation equal whole-clip generation

    def __init__(self, config: ProceduralConfig | None = None) -> None:
        self.config = config or ProceduralConfig()

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
        activity = np.clip((loud - cfg.silence_db) / (cfg.speech_db - cfg.silence_db), 0, 1)
        voiced_db = 10 * np.log10(mel[:, VOICED].mean(1) + 1e-12)
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
        sig = self.signals(features)
        frames = features.start_frame + np.arange(len(features))
        motion = self._motion(sig, frames, features.fps)
        poses = np.repeat(ref[None], len(features), axis=0)
        self._apply(poses, ref, sig, motion)
        return KeypointSeq(poses[skip:], frame_size, features.fps, features.start_frame + skip)

    def _motion(self, sig: dict[str, np.ndarray], frames: np.ndarray, fps: float) -> dict:
        cfg, seed = self.config, self.config.seed
        t = frames / fps
        phase = 2 * np.pi * _hash01(seed, np.arange(9))
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
        side = _hash01(seed, frames, 7) < 0.5  # which wrist a beat starting here lifts
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
        block = max(int(round(self.config.blink_every_s * fps)), 8)
        profile = np.array([0.35, 0.85, 1.0, 0.75, 0.35, 0.1])
        closure = np.zeros(len(frames))
        for b in range(frames.min() // block - 1, frames.max() // block + 1):
            if _hash01(self.config.seed, b, 1) > 0.9:
                continue
            onset = b * block + int(_hash01(self.config.seed, b, 2) * (block - len(profile)))
            k = frames - onset
            inside = (k >= 0) & (k < len(profile))
            closure[inside] = np.maximum(closure[inside], profile[k[inside]])
        return closure

    def _apply(self, poses: np.ndarray, ref: np.ndarray, sig: dict, motion: dict) -> None:
        """Deform the (T, 134, 3) copies of the reference pose in place."""
        cfg = self.config
        jaw = ref[layout.JAW, :2]
        face_w = float(max(np.linalg.norm(jaw[-1] - jaw[0]), 8.0))
        mouth_w = float(np.linalg.norm(ref[_F(54), :2] - ref[_F(48), :2])) + 1e-3
        gap0 = float(
            np.mean(ref[_F(np.array([67, 66, 65])), 1] - ref[_F(np.array([61, 62, 63])), 1])
        )
        # Mouth: Δ = target gap − reference gap; lower lip and jaw take ¾, upper lip ¼.
        delta = sig["opening"] * cfg.max_gap * mouth_w - max(gap0, 0.0)  # (T,)
        # Lips bend most in the middle: weight sin(π·u)^0.6 with u the position across the mouth.
        upper = _F(np.array([49, 50, 51, 52, 53, 61, 62, 63]))
        lower = _F(np.array([55, 56, 57, 58, 59, 65, 66, 67]))
        corners = _F(np.array([48, 54, 60, 64]))
        left_x = ref[_F(48), 0]
        across = lambda idx: np.sin(np.pi * np.clip((ref[idx, 0] - left_x) / mouth_w, 0, 1)) ** 0.6  # noqa: E731
        poses[:, upper, 1] -= 0.25 * delta[:, None] * across(upper)
        poses[:, lower, 1] += 0.75 * delta[:, None] * across(lower)
        poses[:, corners, 1] += 0.2 * delta[:, None]
        jaw_w = np.array([0.15, 0.35, 0.55, 0.75, 0.9, 1.0, 0.9, 0.75, 0.55, 0.35, 0.15])
        poses[:, _F(np.arange(3, 14)), 1] += 0.75 * delta[:, None] * jaw_w[None, :]
        # Lip width about the mouth centre: spread (bright vowels) or rounded (dark ones).
        lips = layout.LIPS
        cx = ref[lips, 0].mean()
        scale = 1 + cfg.lip_spread * sig["brightness"] - 0.04 * np.clip(delta / mouth_w, 0, None)
        poses[:, lips, 0] = cx + (poses[:, lips, 0] - cx) * scale[:, None]
        # Blinks: upper lids close onto the lower lids.
        for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
            d = ref[_F(low), 1] - ref[_F(up), 1]
            poses[:, _F(up), 1] += 0.95 * motion["blink"] * d
        # Head: roll about a pivot between chin and neck, then shift (face widths → pixels).
        head_x, head_y, roll = motion["head"]
        head = np.concatenate([layout.FACE, [layout.NOSE, 14, 15, 16, 17]])
        pivot = 0.5 * (ref[_F(8), :2] + ref[layout.NECK, :2])
        rel = poses[:, head, :2] - pivot
        c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
        poses[:, head, 0] = pivot[0] + c * rel[..., 0] - s * rel[..., 1] + face_w * head_x[:, None]
        poses[:, head, 1] = pivot[1] + s * rel[..., 0] + c * rel[..., 1] + face_w * head_y[:, None]
        # Breathing lifts shoulders and arms; beat gestures lift a wrist, its hand and elbow.
        body = np.concatenate([[1, 2, 3, 4, 5, 6, 7], layout.HANDS])
        poses[:, body, 1] -= face_w * motion["breath"][:, None]
        for lift, wrist, elbow, hand in (
            (motion["lift"][0], layout.L_WRIST, layout.L_ELBOW, layout.LEFT_HAND),
            (motion["lift"][1], layout.R_WRIST, layout.R_ELBOW, layout.RIGHT_HAND),
        ):
            dy = face_w * lift[:, None] * _gesture_scale(ref, wrist, hand)
            poses[:, [wrist], 1] -= dy
            poses[:, [elbow], 1] -= 0.45 * dy
            poses[:, hand, 1] -= dy
