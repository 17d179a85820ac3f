"""Tests of the light streaming audio feature (mmgt.audio.features, kind "light-v1")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmgt.audio import (
    FEATURE_DIM,
    FEATURE_NAMES,
    HOP,
    LOOKAHEAD_MS,
    LOOKAHEAD_SAMPLES,
    WINDOW,
    LightFeatureStream,
    extract_light_features,
    load_audio,
    mel_filterbank,
)
from mmgt.errors import AudioError

SPEECH = Path(__file__).resolve().parents[1] / "mmgt" / "assets" / "speech_sample.wav"
ENERGY, FLUX, ZCR = (FEATURE_NAMES.index(n) for n in ("log_energy", "spectral_flux", "zcr"))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(SPEECH)


def signal(n: int, seed: int = 0) -> np.ndarray:
    """Tone + noise test signal, (n,) float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(n)).astype(np.float32)


def stream_all(x: np.ndarray, sizes) -> np.ndarray:
    """Push ``x`` in chunks of the given sizes (cycled), flush; check indices; (T, D) values."""
    s = LightFeatureStream()
    rows, i, k = [], 0, 0
    while i < x.size:
        size = sizes[k % len(sizes)]
        out = s.push(x[i : i + size])
        assert out.start_frame == s.frames_emitted - len(out) and out.kind == "light-v1"
        rows.append(out.values)
        i, k = i + size, k + 1
    assert s.samples_pushed == x.size
    tail = s.flush()
    assert tail.stop_frame == s.frames_emitted == -(-x.size // HOP)
    return np.concatenate([*rows, tail.values])


def test_constants():
    assert (HOP, WINDOW, LOOKAHEAD_SAMPLES, LOOKAHEAD_MS) == (640, 1024, 192, 12.0)
    assert FEATURE_DIM == len(FEATURE_NAMES) == 43 == len(set(FEATURE_NAMES))
    assert FEATURE_NAMES[:2] == ("logmel_00", "logmel_01") and FEATURE_NAMES[-1] == "zcr"


@pytest.mark.parametrize("n", [1, 639, 640, 641, 832, 833, 1280, 1281, 16000])
def test_frame_counts(n):
    f = extract_light_features(signal(n))
    assert f.values.shape == (-(-n // 640), 43) and f.values.dtype == np.float32
    assert (f.start_frame, f.fps, f.kind) == (0, 25, "light-v1")
    assert np.isfinite(f.values).all()
    assert f.values[0, FLUX] == 0.0


def test_bad_input():
    with pytest.raises(AudioError, match="empty"):
        extract_light_features(np.zeros(0, np.float32))
    with pytest.raises(AudioError, match="resample"):
        extract_light_features(signal(1000), sample_rate=44100)
    bad = [
        (np.array([0.0, np.nan, 0.0], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float64), "NaN or infinite"),
        (np.zeros(100, np.int16), "floating point"),
        (np.zeros((100, 2), np.float32), "mono"),
        (np.float32(0.5), "mono"),
    ]
    for x, match in bad:
        with pytest.raises(AudioError, match=match):
            extract_light_features(x)
        with pytest.raises(AudioError, match=match):
            LightFeatureStream().push(x)


@pytest.mark.parametrize("seed", range(4))
def test_random_chunkings_equal_offline(seed):
    rng = np.random.default_rng(seed)
    x = signal(int(rng.integers(20000, 60000)), seed)
    ref = extract_light_features(x).values
    sizes = [int(v) for v in rng.choice([0, 1, 2, 320, 639, 640, 641, 833, 5000], size=50)]
    assert np.array_equal(stream_all(x, sizes), ref)  # bitwise
    assert np.array_equal(stream_all(x, [int(rng.integers(1, 3000))]), ref)
    assert np.array_equal(stream_all(x, [x.size]), ref)  # one huge chunk


def test_one_sample_chunks_and_long_input(speech):
    x = signal(3000, 7)
    assert np.array_equal(stream_all(x, [1]), extract_light_features(x).values)
    # Longer than one internal block (512 frames): block boundaries are invisible too.
    long = np.concatenate([speech, speech[::-1]])  # 35.9 s, 897 frames
    assert np.array_equal(stream_all(long, [320]), extract_light_features(long).values)
    assert np.array_equal(stream_all(long, [long.size]), extract_light_features(long).values)


def test_emission_timing_flush_and_reset():
    x = signal(5000)
    s = LightFeatureStream()
    assert len(s.push(x[:831])) == 0  # frame 0 needs samples up to 640·0 + 831
    out = s.push(x[831:832])
    assert (len(out), out.start_frame) == (1, 0)
    assert len(s.push(x[832:1471])) == 0
    assert s.push(x[1471:1472]).start_frame == 1
    assert len(s.push(np.zeros(0, np.float32))) == 0
    tail = s.flush()
    assert (tail.start_frame, len(tail)) == (2, 1)  # ceil(1472 / 640) = 3 frames
    assert len(s.flush()) == 0 and s.flush().start_frame == 3
    with pytest.raises(RuntimeError, match="reset"):
        s.push(x)
    s.reset()
    assert (s.frames_emitted, s.samples_pushed) == (0, 0)
    assert len(LightFeatureStream().flush()) == 0  # nothing pushed: nothing to emit
    assert np.array_equal(stream_all(x, [700]), extract_light_features(x).values)


def test_stream_memory_is_bounded():
    s = LightFeatureStream()
    s.push(signal(160000))
    assert s._buf.size < WINDOW  # only the samples later frames still read


def test_lookahead():
    x = signal(8000, 3)
    base = extract_light_features(x).values
    for i in (0, 3, 7):
        y = x.copy()
        y[640 * i + 832 :] = np.random.default_rng(i).uniform(-1, 1, y.size - 640 * i - 832)
        changed = extract_light_features(y).values
        assert np.array_equal(changed[: i + 1], base[: i + 1])
        assert not np.array_equal(changed[i + 1], base[i + 1])
        z = x.copy()
        z[640 * i + 831] += 0.5  # the window's last sample (weight ≈ 1e-5, not zero)
        assert not np.array_equal(extract_light_features(z).values[i], base[i])
        assert np.array_equal(extract_light_features(z).values[:i], base[:i])


def test_mel_filterbank_matches_librosa():
    librosa = pytest.importorskip("librosa")
    for kw in [
        {"sr": 16000, "n_fft": 1024, "n_mels": 40, "fmin": 60.0, "fmax": 7600.0},
        {"sr": 22050, "n_fft": 2048, "n_mels": 80, "fmin": 0.0, "fmax": 8000.0},
    ]:
        for htk in (False, True):
            ref = librosa.filters.mel(**kw, htk=htk)  # float32
            ours = mel_filterbank(
                kw["sr"], kw["n_fft"], kw["n_mels"], kw["fmin"], kw["fmax"], htk=htk
            )
            np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_feature_definitions(speech):
    """Each feature vs a direct per-frame re-implementation of its documented formula."""
    librosa = pytest.importorskip("librosa")
    from scipy.signal import get_window

    x = speech[:48000].astype(np.float64)
    f = extract_light_features(x).values.astype(np.float64)  # (T, 43)
    padded = np.concatenate([np.zeros(192), x, np.zeros(1024)])  # window i = padded[640i:][:1024]
    windows = np.stack([padded[640 * i : 640 * i + 1024] for i in range(len(f))])  # (T, 1024)
    power = np.abs(np.fft.rfft(windows * get_window("hann", 1024), axis=1)) ** 2  # (T, 513)
    mel = power @ librosa.filters.mel(sr=16000, n_fft=1024, n_mels=40, fmin=60, fmax=7600).T
    np.testing.assert_allclose(f[:, :40], np.log(mel + 1e-8), rtol=1e-5, atol=1e-4)
    own = np.pad(x, (0, 640 * len(f) - x.size)).reshape(len(f), 640)  # (T, 640)
    np.testing.assert_allclose(f[:, ENERGY], np.log(np.maximum((own**2).mean(1), 1e-10)), rtol=1e-6)
    crossings = [np.sum(np.diff((row >= 0).astype(int)) != 0) / 639 for row in own]
    np.testing.assert_allclose(f[:, ZCR], crossings, rtol=1e-6)
    flux = np.maximum(np.diff(f[:, :40], axis=0), 0).sum(1)
    np.testing.assert_allclose(f[1:, FLUX], flux, rtol=1e-4, atol=1e-4)


def test_tone_lands_in_its_mel_band():
    weights = mel_filterbank()
    t = np.arange(16000) / 16000
    for hz in (300.0, 1000.0, 3000.0, 6000.0):
        f = extract_light_features(0.5 * np.sin(2 * np.pi * hz * t)).values
        band = np.argmax(f[5:-5, :40].mean(0))
        assert band == np.argmax(weights[:, int(round(hz * 1024 / 16000))])


def test_silence_and_speech_energy(speech):
    f = extract_light_features(speech).values
    energy = f[:, ENERGY]
    quiet = energy < -15  # pauses in the recording (digital/near silence)
    loud = energy > -8
    assert 0.15 < quiet.mean() < 0.6 and loud.mean() > 0.3
    assert np.median(energy[loud]) - np.median(energy[quiet]) > 10  # > 40 dB apart
    # Pauses are long runs (≥ 0.4 s), not isolated frames.
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, quiet.astype(int), 0])))[::2]
    assert (runs >= 10).sum() >= 3
    assert f[loud, FLUX].mean() > 3 * f[quiet, FLUX].mean()
    assert f[quiet, :40].mean() < f[loud, :40].mean() - 5
