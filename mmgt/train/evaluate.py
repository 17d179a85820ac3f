"""Evaluating drivers: held-out corpus clips, a shuffled-audio control, and real speech.

* **Corpus clips** (held-out split, or unseen voices): each driver generates keypoints from the
  clip's audio and reference pose; the metrics of :mod:`mmgt.train.metrics` compare them with
  the clip's ground truth (lip sync r and lag, lip L2), and describe them (jitter, beat
  alignment against audio onsets, diversity across clips).
* **Shuffled-audio control**: the same, but each clip is driven by another clip's audio (cut or
  looped to length). A driver that really listens loses most of its lip-sync correlation.
* **Real speech**: recordings with their transcripts are force-aligned with pocketsphinx; the
  driver's mouth opening is compared with the openness the aligned phones imply
  (:data:`PHONE_OPENNESS`: open vowels open, bilabials closed), smoothed over ±1 frame.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mmgt.audio import extract_light_features
from mmgt.audio.gate import gate_features
from mmgt.train import metrics
from mmgt.types import AudioFeatures, Driver

log = logging.getLogger(__name__)

Clip = tuple[np.ndarray, np.ndarray, np.ndarray]  # audio16k, keypoints (T,134,3) @512, reference

# Typical jaw/lip opening of English phones (ARPAbet), 0 = lips closed … 1 = wide open.
PHONE_OPENNESS = {
    "AA": 1.0, "AE": 0.9, "AH": 0.75, "AO": 0.85, "AW": 0.85, "AY": 0.85, "EH": 0.65,
    "ER": 0.45, "EY": 0.55, "IH": 0.45, "IY": 0.3, "OW": 0.6, "OY": 0.6, "UH": 0.4,
    "UW": 0.3, "HH": 0.5, "K": 0.35, "G": 0.35, "NG": 0.3, "L": 0.35, "R": 0.3, "Y": 0.25,
    "T": 0.25, "D": 0.25, "N": 0.25, "TH": 0.25, "DH": 0.25, "S": 0.2, "Z": 0.2, "SH": 0.2,
    "ZH": 0.2, "CH": 0.2, "JH": 0.2, "W": 0.15, "F": 0.1, "V": 0.1, "P": 0.0, "B": 0.0,
    "M": 0.0, "SIL": 0.0,
}  # fmt: skip
FeatureFn = Callable[[np.ndarray], AudioFeatures]


@dataclass
class DriverUnderTest:
    name: str
    driver: Driver
    features: FeatureFn = extract_light_features


def audio_onsets(audio16k: np.ndarray) -> np.ndarray:
    """Onset frames (25 fps) of a 16 kHz signal: the audio beats for beat alignment."""
    import librosa  # noqa: PLC0415 - slow import, evaluation only

    return librosa.onset.onset_detect(y=audio16k.astype(np.float32), sr=16000, hop_length=640)


def _generate(dut: DriverUnderTest, audio: np.ndarray, reference: np.ndarray, frames: int):
    feats = dut.features(audio)
    if getattr(dut.driver, "speech_gate", False):  # as the engine feeds it
        feats = gate_features(feats)
    if len(feats) < frames:
        raise ValueError(f"features cover {len(feats)} frames, the clip has {frames}")
    return dut.driver.generate(feats.frames(0, frames), reference, frame_size=512).points


def evaluate_clips(
    dut: DriverUnderTest, clips: Sequence[Clip], *, shuffle_audio: bool = False
) -> dict[str, float]:
    """Mean metrics of a driver over clips (optionally with each clip driven by another's audio)."""
    rows, seqs, refs = [], [], []
    for i, (audio, target, reference) in enumerate(clips):
        frames = len(target)
        if shuffle_audio:
            other = clips[(i + 1 + len(clips) // 2) % len(clips)][0]
            need = frames * 640 + 640
            audio = np.tile(other, need // len(other) + 1)[:need]
        gen = _generate(dut, audio, reference, frames)
        sync = metrics.lip_sync(metrics.mouth_opening(gen, reference),
                                metrics.mouth_opening(target, reference))  # fmt: skip
        rows.append({
            "lip_r": sync["r"],
            "lip_lag": sync["lag"],
            "lip_r_at_lag": sync["r_at_lag"],
            "lip_l2_px": metrics.lip_l2(gen, target),
            "jitter": metrics.jitter(gen),
            "beat_align": metrics.beat_alignment(gen, audio_onsets(audio)),
        })  # fmt: skip
        seqs.append(gen)
        refs.append(reference)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["abs_lip_lag"] = float(np.mean([abs(r["lip_lag"]) for r in rows]))
    out["diversity"] = metrics.diversity(seqs, refs)
    out["clips"] = len(rows)
    return out


def describe_ground_truth(clips: Sequence[Clip]) -> dict[str, float]:
    """Jitter, beat alignment and diversity of the clips' own motion: where a driver's belong.

    These metrics describe motion rather than compare it with the truth, so a driver's values
    read against the ground truth's (less jitter than the truth is over-smoothing, not merit).
    """
    targets, references = [c[1] for c in clips], [c[2] for c in clips]
    beats = [metrics.beat_alignment(target, audio_onsets(audio)) for audio, target, _ in clips]
    return {
        "jitter": float(np.mean([metrics.jitter(t) for t in targets])),
        "beat_align": float(np.mean(beats)),
        "diversity": metrics.diversity(targets, references),
        "clips": len(clips),
    }


def phone_openness(phones: Sequence, frames: int, fps: float = 25.0) -> np.ndarray:
    """(frames,) openness implied by aligned phones (``label``, ``start``, ``end`` segments)."""
    centres = (np.arange(frames) + 0.5) / fps
    curve = np.zeros(frames)
    for p in phones:
        sel = (centres >= p.start) & (centres < p.end)
        curve[sel] = PHONE_OPENNESS.get(p.label.upper().rstrip("012"), 0.3)
    return np.convolve(np.pad(curve, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")


def evaluate_real_speech(
    dut: DriverUnderTest,
    recordings: Sequence[tuple[str, np.ndarray, str]],
    reference: np.ndarray,
    aligner,  # noqa: ANN001 - mmgt.train.corpus.align.Aligner
) -> dict[str, dict[str, float]]:
    """Per recording (name, audio16k, text): r and lag of mouth opening vs phone openness."""
    out = {}
    for name, audio, text in recordings:
        alignment = aligner.align(audio, text, check=False)  # real speech: keep long pauses
        frames = len(dut.features(audio))
        gen = _generate(dut, audio, reference, frames)
        target = phone_openness(alignment.phones, frames)
        sync = metrics.lip_sync(metrics.mouth_opening(gen, reference), target)
        out[name] = {"r": sync["r"], "lag": sync["lag"], "r_at_lag": sync["r_at_lag"]}
    return out
