"""The light streaming audio feature ("light-v1"): 43 numbers per 25 fps video frame.

At 16 kHz a video frame is ``HOP = 640`` samples; frame ``i`` describes samples
``[640·i, 640·(i+1))``. Its spectral analysis uses a periodic Hann window of ``WINDOW = 1024``
samples centred on the frame centre (``640·i + 320``), i.e. samples ``[640·i − 192, 640·i + 832)``
(zeros before t = 0 and after the end), so a frame is final ``LOOKAHEAD_SAMPLES = 192`` samples
(12 ms) after its own end. Per frame, in :data:`FEATURE_NAMES` order:

* ``logmel_00`` … ``logmel_39``: ``log(mel + 1e-8)`` of the power spectrum ``|rfft|²`` of the
  windowed 1024 samples through 40 Slaney-scale, Slaney-normalised triangular mel filters
  60–7600 Hz (same as ``librosa.filters.mel`` defaults) — the spectral envelope (what is said);
* ``log_energy``: ``log(max(mean(x²), 1e-10))`` over the frame's own 640 samples — loudness;
* ``spectral_flux``: sum of the positive log-mel increases vs the previous frame (0 for frame 0)
  — onsets, syllable rhythm;
* ``zcr``: fraction of the 639 adjacent sample pairs of the frame's own samples whose sign
  (``x >= 0``) differs — voiced vs fricative/noise.

:func:`extract_light_features` (offline) and :class:`LightFeatureStream` (live) share one core,
and every operation in it is row-independent and in a fixed order, so streaming output over any
chunking is bitwise equal to the offline output. (A BLAS matmul for the mel projection is not:
its summation order depends on the batch size, so the projection is an explicit loop over the
filters' few non-zero bins instead.)
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mmgt.audio.decode import SAMPLE_RATE
from mmgt.errors import AudioError
from mmgt.types import FPS, AudioFeatures

KIND = "light-v1"
HOP = SAMPLE_RATE // FPS  # 640 samples = 40 ms
WINDOW = 1024
N_MELS, FMIN, FMAX = 40, 60.0, 7600.0
_PAD_LEFT = (WINDOW - HOP) // 2  # 192: window start relative to the frame start
LOOKAHEAD_SAMPLES = WINDOW - HOP - _PAD_LEFT  # 192 samples past the frame's own end
LOOKAHEAD_MS = 1000.0 * LOOKAHEAD_SAMPLES / SAMPLE_RATE  # 12.0
FEATURE_NAMES: tuple[str, ...] = (
    *(f"logmel_{m:02d}" for m in range(N_MELS)),
    "log_energy",
    "spectral_flux",
    "zcr",
)
FEATURE_DIM = len(FEATURE_NAMES)  # 43
_BLOCK = 512  # frames per core call: bounds memory for long inputs (rows are independent)


def hz_to_mel(hz: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Hz → mel: HTK (2595·log10(1 + f/700)) or Slaney (linear < 1 kHz, log above)."""
    f = np.asarray(hz, dtype=np.float64)
    if htk:
        return 2595.0 * np.log10(1.0 + f / 700.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    mel = f / f_sp
    log_part = min_log_hz / f_sp + np.log(np.maximum(f, min_log_hz) / min_log_hz) / logstep
    return np.where(f >= min_log_hz, log_part, mel)


def mel_to_hz(mel: np.ndarray | float, htk: bool = False) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mel, dtype=np.float64)
    if htk:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


def mel_filterbank(
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = WINDOW,
    n_mels: int = N_MELS,
    fmin: float = FMIN,
    fmax: float = FMAX,
    *,
    htk: bool = False,
) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) float64 triangular filters with Slaney area normalisation.

    Matches ``librosa.filters.mel(sr=..., n_fft=..., n_mels=..., fmin=..., fmax=..., htk=...)``.
    """
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin, htk), hz_to_mel(fmax, htk), n_mels + 2), htk)
    widths = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))  # (n_mels, F)
    return weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def _sparse_filters(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Filters → (bin index, weight), both (n_mels, K): each filter's non-zero bins, 0-padded."""
    spans = [np.flatnonzero(row) for row in weights]
    k = max(len(s) for s in spans)
    idx = np.zeros((len(spans), k), np.intp)
    wts = np.zeros((len(spans), k), np.float64)
    for m, s in enumerate(spans):
        idx[m, : len(s)] = s
        wts[m, : len(s)] = weights[m, s]
    return idx, wts


_HANN = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic, (1024,)
_MEL_IDX, _MEL_WTS = _sparse_filters(mel_filterbank())  # (40, K) each, K ≈ 60


def _block(padded: np.ndarray, prev_logmel: np.ndarray | None) -> np.ndarray:
    """Features of T frames; ``padded`` is (640·(T−1) + 1024,) float64, row i = padded[640i:]."""
    windows = sliding_window_view(padded, WINDOW)[::HOP]  # (T, 1024) view
    spec = np.fft.rfft(windows * _HANN, axis=-1)  # (T, 513)
    power = spec.real**2 + spec.imag**2  # (T, 513)
    gathered = power[:, _MEL_IDX]  # (T, 40, K)
    mel = np.zeros(gathered.shape[:2])  # (T, 40)
    for j in range(_MEL_IDX.shape[1]):  # fixed summation order, independent of T
        mel += gathered[:, :, j] * _MEL_WTS[:, j]
    logmel = np.log(mel + 1e-8)  # (T, 40)
    own = windows[:, _PAD_LEFT : _PAD_LEFT + HOP]  # (T, 640) the frame's own samples
    energy = np.log(np.maximum((own * own).mean(axis=1), 1e-10))  # (T,)
    prev = logmel[:1] if prev_logmel is None else prev_logmel[None]  # (1, 40)
    flux = np.maximum(logmel - np.concatenate([prev, logmel[:-1]]), 0.0).sum(axis=1)  # (T,)
    sign = own >= 0.0  # (T, 640)
    zcr = np.count_nonzero(sign[:, 1:] != sign[:, :-1], axis=1) / (HOP - 1)  # (T,)
    return np.concatenate([logmel, energy[:, None], flux[:, None], zcr[:, None]], axis=1)


def _compute(
    padded: np.ndarray, n_frames: int, prev_logmel: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(n_frames, 43) float32 features in blocks of :data:`_BLOCK` frames, and the last (40,)
    float64 log-mel row (the next frame's flux reference, kept at full precision)."""
    out = np.empty((n_frames, FEATURE_DIM), np.float32)
    for lo in range(0, n_frames, _BLOCK):
        hi = min(lo + _BLOCK, n_frames)
        feats = _block(padded[HOP * lo : HOP * (hi - 1) + WINDOW], prev_logmel)  # (hi−lo, 43)
        prev_logmel = feats[-1, :N_MELS]
        out[lo:hi] = feats
    return out, prev_logmel


def _validate(samples: np.ndarray) -> np.ndarray:
    """(n,) float mono samples → float64, or AudioError naming the problem."""
    arr = np.asarray(samples)
    if arr.dtype.kind != "f":
        raise AudioError(
            f"audio samples must be floating point in [-1, 1], got {arr.dtype} "
            "(convert PCM16 with mmgt.audio.pcm16_to_float)"
        )
    if arr.ndim != 1:
        raise AudioError(f"audio samples must be mono with shape (n,), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise AudioError("audio samples contain NaN or infinite values")
    return arr.astype(np.float64)


def _empty(start_frame: int) -> AudioFeatures:
    return AudioFeatures(np.zeros((0, FEATURE_DIM), np.float32), FPS, start_frame, KIND)


def extract_light_features(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> AudioFeatures:
    """All "light-v1" frames of a whole signal: (ceil(n / 640), 43), the tail zero-padded.

    ``samples`` must be mono float at 16 kHz; other rates are rejected rather than silently
    resampled (resample with :func:`load_audio` or :class:`StreamingResampler` first).
    """
    if sample_rate != SAMPLE_RATE:
        raise AudioError(
            f"light features need {SAMPLE_RATE} Hz audio, got {sample_rate} Hz: resample first "
            f"(load_audio(..., sample_rate={SAMPLE_RATE}) or StreamingResampler)"
        )
    x = _validate(samples)
    if x.size == 0:
        raise AudioError("cannot extract features from empty audio (0 samples)")
    n_frames = -(-x.size // HOP)
    padded = np.zeros(HOP * (n_frames - 1) + WINDOW)  # (640·(T−1) + 1024,)
    padded[_PAD_LEFT : _PAD_LEFT + x.size] = x
    values, _ = _compute(padded, n_frames, None)
    return AudioFeatures(values, FPS, 0, KIND)


class LightFeatureStream:
    """Incremental :func:`extract_light_features`: push 16 kHz chunks, get finished frames.

    Frame ``i`` is emitted as soon as sample ``640·i + 831`` has been pushed. Only the samples
    still needed (< 1024) are kept, plus the last log-mel row for the flux. Output over any
    chunking, followed by :meth:`flush`, equals the offline result exactly.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything and start a new stream at frame 0."""
        # Samples from (padded) index 640·frames_emitted on; padding = 192 zeros before t = 0.
        self._buf = np.zeros(_PAD_LEFT)
        self._n = 0
        self._emitted = 0
        self._prev: np.ndarray | None = None
        self._flushed = False

    @property
    def frames_emitted(self) -> int:
        """Number of frames returned so far (= start_frame of the next output)."""
        return self._emitted

    @property
    def samples_pushed(self) -> int:
        """Number of samples received so far."""
        return self._n

    def _emit(self, n_frames: int) -> AudioFeatures:
        start = self._emitted
        if n_frames <= 0:
            return _empty(start)
        values, self._prev = _compute(self._buf, n_frames, self._prev)  # (n_frames, 43)
        self._buf = self._buf[HOP * n_frames :].copy()  # drop what no later frame reads
        self._emitted += n_frames
        return AudioFeatures(values, FPS, start, KIND)

    def push(self, samples: np.ndarray) -> AudioFeatures:
        """Add (n,) float 16 kHz samples; return the frames that became complete (maybe none)."""
        if self._flushed:
            raise RuntimeError("LightFeatureStream was flushed; call reset() to start a new stream")
        x = _validate(samples)
        if x.size:
            self._buf = np.concatenate([self._buf, x])
            self._n += x.size
        ready = max(0, (self._n - HOP - LOOKAHEAD_SAMPLES) // HOP + 1)
        return self._emit(ready - self._emitted)

    def flush(self) -> AudioFeatures:
        """End of stream: zero-pad and return the remaining frames (total = ceil(n / 640))."""
        if self._flushed:
            return _empty(self._emitted)
        self._flushed = True
        remaining = -(-self._n // HOP) - self._emitted
        if remaining > 0:
            need = HOP * (remaining - 1) + WINDOW
            self._buf = np.concatenate([self._buf, np.zeros(need - self._buf.size)])
        return self._emit(remaining)
