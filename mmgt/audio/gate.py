"""A speech gate on the light features: frames without speech reach the driver as silence.

The shipped SMGA model tells speech from silence by the audio's shape more than its level (it
was trained with gain augmentation), so steady background noise alone — a fan, a laptop
microphone's hiss at −60 dBFS — holds its mouth parted, and in noisy speech the pauses do not
close it. A microphone chain's noise gate fixes that before the model: each frame's 40 mel
bands are compared with their own background level, and a frame whose bands do not stand out
is attenuated towards digital silence, which the model answers with a closed, calm mouth.

Per frame ``t`` (causal, so streamed and offline output are equal over any chunking):

* the background of each band is the 10th percentile of its level over the last 5 s (minimum
  statistics: the gaps between words reach the background even in continuous speech); for the
  first second, before that estimate means anything, it is at most −80 dB (the gate is open);
* the frame's speech evidence is the mean, over the 10 bands furthest above their background,
  of that distance in dB (speech raises some bands far above noise; noise raises none);
* the gain opens linearly from 6 dB of evidence (closed) to 12 dB (open), at once, and closes
  by at most a quarter per frame (a word's tail is not cut);
* the frame's mel power and energy are scaled by the gain squared, the zero-crossing rate by the
  gain, and the spectral flux is recomputed from the gated bands. At gain 1 (and gain 1 before
  it) the frame is passed through bit for bit.

Measured with the shipped model on the bundled speech sample with white or pink noise added at
−45 to −25 dBFS: the correlation of the mouth opening with that of the clean recording rose
from 0.87–0.91 to 0.94–0.99, and on noise alone the mouth rests closed (median lip gap 0.05,
as on digital silence, against 0.16–0.24 ungated). Clean speech is unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from mmgt.audio.features import N_MELS
from mmgt.types import AudioFeatures

HISTORY_FRAMES = 125  # 5 s at 25 fps: the window of the background estimate
WARMUP_FRAMES = 25  # before 1 s, the background is at most FLOOR_PRIOR_DB
FLOOR_PERCENTILE = 10.0
FLOOR_PRIOR_DB = -80.0
TOP_BANDS = 10  # the bands whose rise above the background is speech evidence
CLOSED_DB, OPEN_DB = 6.0, 12.0  # evidence at which the gain is 0 and 1
RELEASE_PER_FRAME = 0.25  # the most the gain falls per frame
_DB = 10.0 / math.log(10.0)  # natural log of power → dB
_ENERGY, _FLUX, _ZCR = N_MELS, N_MELS + 1, N_MELS + 2


class SpeechGate:
    """Streaming gate: :meth:`push` light-feature frames in order, get them gated."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the background too (a new input)."""
        self._levels = np.zeros((HISTORY_FRAMES, N_MELS))  # dB per band, a ring buffer
        self._seen = 0
        self.gain = 1.0
        self.restart()

    def restart(self) -> None:
        """A new feature stream begins (its first frame has no flux); the background is kept,
        since the room has not changed."""
        self._prev_logmel: np.ndarray | None = None  # (40,) the last frame as gated
        self._prev_open = True

    def push(self, values: np.ndarray) -> np.ndarray:
        """(T, 43) light features → (T, 43) float32 gated features."""
        out = np.array(values, np.float32)
        for t in range(out.shape[0]):
            self._gate_frame(out[t])
        return out

    def _gate_frame(self, row: np.ndarray) -> None:
        logmel = row[:N_MELS].astype(np.float64)  # (40,)
        self._levels[self._seen % HISTORY_FRAMES] = logmel * _DB
        self._seen += 1
        floor = _percentile(self._levels[: min(self._seen, HISTORY_FRAMES)], FLOOR_PERCENTILE)
        if self._seen < WARMUP_FRAMES:
            floor = np.minimum(floor, FLOOR_PRIOR_DB)
        evidence = np.sort(logmel * _DB - floor)[-TOP_BANDS:].mean()
        opening = min(max((evidence - CLOSED_DB) / (OPEN_DB - CLOSED_DB), 0.0), 1.0)
        self.gain = max(opening, self.gain - RELEASE_PER_FRAME)
        prev, self._prev_logmel = self._prev_logmel, logmel
        if self.gain == 1.0 and self._prev_open:
            return  # passed through unchanged
        self._prev_open = self.gain == 1.0
        g2 = self.gain**2
        gated = np.log(np.maximum(np.exp(logmel) - 1e-8, 0.0) * g2 + 1e-8)  # as features.py
        self._prev_logmel = gated
        row[:N_MELS] = gated
        row[_ENERGY] = math.log(max(math.exp(float(row[_ENERGY])) * g2, 1e-10))
        row[_FLUX] = 0.0 if prev is None else float(np.maximum(gated - prev, 0.0).sum())
        row[_ZCR] *= self.gain


def _percentile(rows: np.ndarray, q: float) -> np.ndarray:
    """``np.percentile(rows, q, axis=0)`` (linear interpolation) by partial sorting: the gate
    costs about 90 µs a frame with it instead of 200 µs."""
    pos = q / 100.0 * (rows.shape[0] - 1)
    lo = int(pos)
    hi = min(lo + 1, rows.shape[0] - 1)
    part = np.partition(rows, (lo, hi), axis=0)  # (n, 40)
    return part[lo] + (pos - lo) * (part[hi] - part[lo])


def gate_features(features: AudioFeatures) -> AudioFeatures:
    """The gate over a whole clip (what :class:`SpeechGate` gives when streamed)."""
    return AudioFeatures(SpeechGate().push(features.values), features.fps,
                         features.start_frame, features.kind)  # fmt: skip
