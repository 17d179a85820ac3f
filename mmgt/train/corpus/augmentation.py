"""Audio augmentation for training on clean synthetic speech: what rooms, devices and networks do.

Each effect is a function ``(samples16k, …) -> samples16k`` that keeps the length and returns
finite float32 in [-1, 1]; :func:`augment` applies a random chain in a physical order: room
(reverb, noise) → microphone (gain, band limit, resampling) → echo cancellation → AGC →
network (Opus, a real encode/decode with PyAV's libopus, as a browser microphone over WebRTC).
None of them shifts the audio in time (the motion stays in sync).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import av
import numpy as np
import scipy.ndimage
import scipy.signal
import soxr

from mmgt.audio import load_audio

SR = 16000


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges of :func:`augment` (levels in dB, times in seconds)."""

    p_reverb: float = 0.3
    rt60_s: tuple[float, float] = (0.15, 0.8)
    wet: tuple[float, float] = (0.1, 0.5)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (5.0, 35.0)
    noise_kinds: tuple[str, ...] = ("white", "pink", "babble")
    p_gain: float = 0.8
    gain_db: tuple[float, float] = (-20.0, 6.0)
    p_band: float = 0.2
    bands: tuple[tuple[float, float], ...] = ((300, 3400), (100, 7000), (200, 5000), (50, 4000))
    p_resample: float = 0.3
    rates: tuple[int, ...] = (8000, 11025, 22050, 44100, 48000)
    p_echo: float = 0.15
    echo_db: tuple[float, float] = (-35.0, -15.0)
    p_agc: float = 0.3
    p_opus: float = 0.3
    opus_kbps: tuple[float, float] = (8.0, 48.0)


def _finish(y: np.ndarray, n: int) -> np.ndarray:
    y = np.nan_to_num(np.asarray(y, np.float64)[:n], nan=0.0, posinf=0.0, neginf=0.0)
    if len(y) < n:
        y = np.pad(y, (0, n - len(y)))
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) + 1e-9


def gain(x: np.ndarray, db: float) -> np.ndarray:
    """Scale by ``db`` (clipping at full scale, as a too-hot microphone does)."""
    return _finish(x * 10 ** (db / 20), len(x))


def noise(
    x: np.ndarray,
    rng: np.random.Generator,
    snr_db: float,
    kind: str = "white",
    others: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """Add white, pink (1/f) or babble noise at ``snr_db`` relative to the signal.

    Babble sums 3–5 other utterances (``others``, e.g. other TTS clips) at random offsets; without
    them it uses time-reversed, shifted copies of ``x`` (speech-like spectrum, unintelligible).
    """
    n = len(x)
    if kind == "white":
        nz = rng.standard_normal(n)
    elif kind == "pink":
        spec = np.fft.rfft(rng.standard_normal(n))
        spec /= np.sqrt(np.maximum(np.arange(len(spec)), 1.0))
        nz = np.fft.irfft(spec, n)
    elif kind == "babble":
        pool = [np.asarray(o, np.float64) for o in others if len(o)] or [x[::-1].astype(np.float64)]
        nz = np.zeros(n)
        for _ in range(int(rng.integers(3, 6))):
            src = pool[int(rng.integers(len(pool)))]
            src = np.tile(src, int(np.ceil(n / len(src))) + 1)
            start = int(rng.integers(0, len(src) - n + 1))
            nz += src[start : start + n] / _rms(src)
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    nz *= _rms(x) / _rms(nz) * 10 ** (-snr_db / 20)
    return _finish(x + nz, n)


def reverb(x: np.ndarray, rng: np.random.Generator, rt60_s: float, wet: float) -> np.ndarray:
    """Convolve with a synthetic room response: exponentially decaying noise after a direct path."""
    length = int(min(rt60_s * 1.2, 1.5) * SR)
    t = np.arange(length) / SR
    ir = rng.standard_normal(length) * np.exp(-6.9 * t / rt60_s)  # −60 dB at rt60
    ir[: int(0.003 * SR)] = 0.0  # the first reflection arrives a few ms after the direct sound
    ir *= wet / (np.sqrt(np.sum(ir**2)) + 1e-9)
    ir[0] = 1.0 - wet
    y = scipy.signal.fftconvolve(x.astype(np.float64), ir)[: len(x)]
    return _finish(y * (_rms(x) / _rms(y)), len(x))


def band_limit(x: np.ndarray, low_hz: float, high_hz: float) -> np.ndarray:
    """Band-pass (4th-order Butterworth, zero phase), e.g. telephone 300–3400 Hz."""
    sos = scipy.signal.butter(
        4, [low_hz, min(high_hz, 0.95 * SR / 2)], "bandpass", fs=SR, output="sos"
    )
    padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)  # short windows: shorter edge padding
    return _finish(scipy.signal.sosfiltfilt(sos, x.astype(np.float64), padlen=padlen), len(x))


def resample_roundtrip(x: np.ndarray, rate: int, quality: str = "HQ") -> np.ndarray:
    """16 kHz → ``rate`` → 16 kHz with soxr (8 kHz loses everything above 4 kHz)."""
    mid = soxr.resample(x.astype(np.float32), SR, rate, quality=quality)
    return _finish(soxr.resample(mid, rate, SR, quality=quality), len(x))


def opus_roundtrip(x: np.ndarray, bitrate: int = 24000) -> np.ndarray:
    """Encode with libopus at 48 kHz in Ogg (PyAV) and decode back to 16 kHz."""
    x48 = soxr.resample(x.astype(np.float32), SR, 48000).astype(np.float32)
    x48 = np.pad(x48, (0, (-len(x48)) % 960))
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = int(bitrate)
        for i in range(0, len(x48), 960):
            frame = av.AudioFrame.from_ndarray(x48[None, i : i + 960], format="flt", layout="mono")
            frame.sample_rate, frame.pts = 48000, i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return _finish(load_audio(buf.getvalue()), len(x))


def echo_cancel(
    x: np.ndarray,
    rng: np.random.Generator,
    echo_db: float = -25.0,
    far_end: np.ndarray | None = None,
) -> np.ndarray:
    """Residual echo of far-end audio, then an AEC-like suppressor that gates quiet frames.

    The echo is a delayed (20–120 ms), low-passed copy of ``far_end`` (default: ``x`` reversed)
    at ``echo_db`` re the signal; the suppressor attenuates 10 ms frames more than 20 dB under
    the loudest by 10–30 dB, with smoothed gains (what WebRTC's AEC/NS do to pauses).
    """
    n = len(x)
    far = np.asarray(far_end if far_end is not None else x[::-1], np.float64)
    far = np.resize(far, n)
    delay = int(rng.uniform(0.02, 0.12) * SR)
    sos = scipy.signal.butter(2, 3000, "lowpass", fs=SR, output="sos")
    echo = np.concatenate([np.zeros(delay), scipy.signal.sosfilt(sos, far)])[:n]
    y = x + echo * (_rms(x) / _rms(echo)) * 10 ** (echo_db / 20)
    hop = SR // 100
    frames = int(np.ceil(n / hop))
    level = 10 * np.log10(
        np.array([np.mean(y[i * hop : (i + 1) * hop] ** 2) + 1e-12 for i in range(frames)])
    )
    depth = rng.uniform(10, 30)
    g_db = np.where(level < level.max() - 20, -depth, 0.0)
    g_db = scipy.ndimage.minimum_filter1d(g_db, 3)  # no gating a frame next to speech …
    g_db = scipy.ndimage.uniform_filter1d(g_db, 5)  # … and smooth gain changes
    g = np.repeat(10 ** (g_db / 20), hop)[:n]
    return _finish(y * g, n)


def agc(x: np.ndarray, target_db: float = -20.0, max_gain_db: float = 20.0) -> np.ndarray:
    """Automatic gain control / compression: fast attack, slow release towards ``target_db``."""
    hop = SR // 100
    frames = int(np.ceil(len(x) / hop))
    level = np.array([_rms(x[i * hop : (i + 1) * hop]) for i in range(frames)])
    env = np.zeros(frames)
    e = level.max() * 0.1
    for i, v in enumerate(level):
        e = 0.5 * e + 0.5 * v if v > e else 0.97 * e + 0.03 * v
        env[i] = e
    g_db = np.clip(target_db - 20 * np.log10(env + 1e-9), -max_gain_db, max_gain_db)
    g_db = np.where(level < 10 ** (-60 / 20), np.minimum(g_db, 0.0), g_db)  # no pumping up silence
    g = np.interp(np.arange(len(x)), (np.arange(frames) + 0.5) * hop, 10 ** (g_db / 20))
    return _finish(np.tanh(x * g * 1.2) / 1.2, len(x))  # soft limiter


def augment(
    samples16k: np.ndarray,
    rng: np.random.Generator,
    params: AugmentParams | None = None,
    others: Sequence[np.ndarray] = (),
) -> np.ndarray:
    """A random chain of the effects above (``others``: other clips for babble and echo)."""
    p = params or AugmentParams()
    x = _finish(samples16k, len(samples16k))
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    if rng.random() < p.p_reverb:
        x = reverb(x, rng, u(p.rt60_s), u(p.wet))
    if rng.random() < p.p_noise:
        x = noise(x, rng, u(p.snr_db), str(rng.choice(p.noise_kinds)), others)
    if rng.random() < p.p_gain:
        x = gain(x, u(p.gain_db))
    if rng.random() < p.p_band:
        x = band_limit(x, *p.bands[int(rng.integers(len(p.bands)))])
    if rng.random() < p.p_resample:
        x = resample_roundtrip(x, int(rng.choice(p.rates)), str(rng.choice(["LQ", "HQ"])))
    if rng.random() < p.p_echo:
        far = others[int(rng.integers(len(others)))] if others else None
        x = echo_cancel(x, rng, u(p.echo_db), far)
    if rng.random() < p.p_agc:
        x = agc(x, float(rng.uniform(-26, -14)))
    if rng.random() < p.p_opus:
        x = opus_roundtrip(x, int(1000 * u(p.opus_kbps)))
    return x
