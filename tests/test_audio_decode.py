"""Tests of mmgt.audio.decode: file decoding, resampling, PCM16 conversion, streaming resampler."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import soxr

from mmgt.audio import SAMPLE_RATE, StreamingResampler, load_audio, pcm16_to_float, write_wav
from mmgt.errors import AudioError, InputError

SPEECH = Path(__file__).resolve().parents[1] / "mmgt" / "assets" / "speech_sample.wav"


def tone(rate: int, seconds: float, channels: int = 1, hz: float = 440.0) -> np.ndarray:
    """(n, channels) float32 sine at half scale."""
    t = np.arange(int(round(rate * seconds))) / rate
    x = 0.5 * np.sin(2 * np.pi * hz * t)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def peak_hz(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spec) * rate / x.size)


def encode(path: Path, x: np.ndarray, rate: int, codec: str) -> Path:
    """Encode (n, C) float32 with PyAV into ``path`` (container from the suffix)."""
    layout = "mono" if x.shape[1] == 1 else "stereo"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if codec == "vorbis":
            stream.codec_context.options = {"strict": "experimental"}
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x.T), format="fltp", layout=layout)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_wav_rates_channels_dtypes(tmp_path, rate, channels, subtype):
    x = tone(rate, 1.3, channels)
    path = tmp_path / "t.wav"
    sf.write(path, x, rate, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(y.size - x.shape[0] * SAMPLE_RATE / rate) <= 1
    assert np.abs(y).max() <= 1.0
    assert peak_hz(y) == pytest.approx(440, abs=1.5)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_stereo_is_channel_mean(tmp_path):
    x = tone(44100, 1.0, 2)
    x[:, 1] = 0.0  # right silent → mono is half the left channel
    sf.write(tmp_path / "s.wav", x, 44100, subtype="FLOAT")
    y = load_audio(tmp_path / "s.wav")
    assert np.abs(y[1000:-1000]).max() == pytest.approx(0.25, abs=0.005)


def test_native_rate_is_untouched_and_other_target_rates(tmp_path):
    x = tone(16000, 0.5)[:, 0]
    write_wav(tmp_path / "n.wav", x, 16000)
    y = load_audio(str(tmp_path / "n.wav"))
    np.testing.assert_allclose(y, x, atol=1 / 32768)  # only PCM16 quantisation
    z = load_audio(tmp_path / "n.wav", sample_rate=22050)
    assert abs(z.size - 0.5 * 22050) <= 1
    assert peak_hz(z, 22050) == pytest.approx(440, abs=2.5)


@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [
        ("a.mp3", "libmp3lame", 44100),
        ("a.flac", "flac", 48000),
        ("a.ogg", "vorbis", 44100),
        ("a.opus", "libopus", 48000),
        ("a.m4a", "aac", 22050),
    ],
)
def test_compressed_formats(tmp_path, name, codec, rate):
    path = encode(tmp_path / name, tone(rate, 1.5, 2), rate, codec)
    y = load_audio(path)
    assert y.dtype == np.float32
    assert abs(y.size / SAMPLE_RATE - 1.5) < 0.1  # lossy codecs add a little padding
    assert peak_hz(y) == pytest.approx(440, abs=1.5)
    assert np.array_equal(load_audio(path.read_bytes()), y)  # bytes input decodes the same


def test_bundled_sample():
    y = load_audio(SPEECH)
    assert y.size / SAMPLE_RATE == pytest.approx(17.9, abs=0.1)
    assert 0.01 < np.sqrt(np.mean(y**2)) < 0.5


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (np.random.default_rng(0).bytes(4000), "not audio or is corrupt"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not audio or is corrupt"),  # truncated header
        (b"this is a text file, not a song\n" * 40, "not audio or is corrupt"),
        (b"", "empty"),
    ],
    ids=["random", "truncated-header", "text", "zero-bytes"],
)
def test_corrupt_files(tmp_path, content, match):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=match):
        load_audio(path)
    with pytest.raises(AudioError, match=match):
        load_audio(content)


@pytest.mark.parametrize(("name", "codec"), [("d.mp3", "libmp3lame"), ("d.flac", "flac")])
def test_damaged_files_never_leak_ffmpeg_errors(tmp_path, name, codec):
    """Garbage spliced into a real file: partial audio or an AudioError, nothing else."""
    good = encode(tmp_path / name, tone(44100, 1.0, 1), 44100, codec).read_bytes()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(12):
        lo = int(rng.integers(0, len(good)))
        hi = lo + int(rng.integers(1, len(good)))
        data = good[:lo] + rng.bytes(hi - lo) + good[hi:]
        try:
            y = load_audio(data)
        except AudioError:
            outcomes.add("error")
        else:
            assert y.dtype == np.float32 and np.isfinite(y).all() and y.size > 0
            outcomes.add("audio")
    assert outcomes


def test_empty_nan_missing_and_non_audio(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="no audio samples"):
        load_audio(tmp_path / "empty.wav")
    for bad in (np.nan, np.inf):
        x = np.zeros(800, np.float32)
        x[100] = bad
        sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
        with pytest.raises(AudioError, match="NaN or infinite"):
            load_audio(tmp_path / "nan.wav")
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.mp3")
    with pytest.raises(AudioError, match="not a regular file"):
        load_audio(tmp_path)
    png = SPEECH.parent / "astronaut.png"
    with pytest.raises(AudioError, match="no audio stream"):
        load_audio(png)


def test_limits_and_arguments(tmp_path):
    write_wav(tmp_path / "t.wav", tone(8000, 2.0), 8000)
    with pytest.raises(AudioError, match="longer than the limit of 1 s"):
        load_audio(tmp_path / "t.wav", max_seconds=1)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(tmp_path / "t.wav", sample_rate=100)
    with pytest.raises(AudioError, match="max_seconds"):
        load_audio(tmp_path / "t.wav", max_seconds=0)
    assert issubclass(AudioError, InputError) and issubclass(AudioError, ValueError)


def test_write_wav_roundtrip_and_errors(tmp_path):
    x = np.array([0.0, 0.5, -0.5, 2.0], np.float32)  # 2.0 is clipped
    write_wav(tmp_path / "w.wav", x, 16000)
    y, rate = sf.read(tmp_path / "w.wav", dtype="float32")
    assert rate == 16000 and sf.info(tmp_path / "w.wav").subtype == "PCM_16"
    np.testing.assert_allclose(y, [0.0, 0.5, -0.5, 1.0], atol=1 / 16384)
    with pytest.raises(AudioError):
        write_wav(tmp_path / "w.wav", np.array([np.nan], np.float32), 16000)
    with pytest.raises(AudioError):
        write_wav(tmp_path / "w.wav", np.zeros(0, np.float32), 16000)


def test_pcm16_to_float():
    frames = np.array([[32767, -32768], [0, 16384], [-16384, -16384]], "<i2")  # (n, 2)
    y = pcm16_to_float(frames.tobytes(), 2)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-0.5 / 32768, 0.25, -0.5], atol=1e-7)
    assert pcm16_to_float(frames[:, 0].tobytes(), 1)[1] == 0.0
    assert pcm16_to_float(b"", 2).size == 0
    with pytest.raises(AudioError, match="whole number"):
        pcm16_to_float(b"\x00\x01\x02", 1)
    with pytest.raises(AudioError, match="whole number"):
        pcm16_to_float(b"\x00" * 6, 2)
    with pytest.raises(AudioError, match="channels"):
        pcm16_to_float(b"", 0)


def _chunked(resampler: StreamingResampler, x: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    outs, i = [], 0
    while i < len(x):
        k = int(rng.choice([0, 1, 7, 160, 441, 960, 4000, 30000]))
        outs.append(resampler.push(x[i : i + k]))
        i += k
    outs.append(resampler.flush())
    return np.concatenate(outs)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 96000])
def test_streaming_resampler_matches_offline(rate):
    rng = np.random.default_rng(rate)
    x = (tone(rate, 1.5)[:, 0] + 0.05 * rng.standard_normal(int(rate * 1.5))).astype(np.float32)
    ref = soxr.resample(x, rate, SAMPLE_RATE, quality="HQ")
    y = _chunked(StreamingResampler(rate), x, seed=rate)
    assert y.dtype == np.float32
    assert abs(y.size - x.size * SAMPLE_RATE / rate) <= 1
    # soxr streaming and one-shot agree (to float noise; ends may differ by filter transients).
    m = min(y.size, ref.size)
    np.testing.assert_allclose(y[:m], ref[:m], atol=1e-4)
    assert peak_hz(y) == pytest.approx(440, abs=1.5)


def test_streaming_resampler_knows_what_it_holds_back():
    rng = np.random.default_rng(4)
    r, given, taken = StreamingResampler(44100), 0, 0
    for _ in range(40):
        chunk = rng.standard_normal(int(rng.integers(1, 3000))).astype(np.float32)
        given += r.push(chunk).size
        taken += chunk.size
        # The output so far plus what is held back is where the input's end lands.
        assert given + r.held_back == taken * SAMPLE_RATE // 44100
        assert r.held_back <= SAMPLE_RATE // 20  # a filter block, not a backlog (≤ 50 ms)
    assert abs(given + r.flush().size - taken * SAMPLE_RATE / 44100) <= 1
    assert r.held_back == 0


def test_streaming_resampler_stereo_int16_passthrough():
    x = tone(48000, 1.0, 2)
    x[:, 1] = -0.5 * x[:, 1]
    mono = _chunked(StreamingResampler(48000, channels=2), x, seed=1)
    ref = _chunked(StreamingResampler(48000), x.mean(axis=1), seed=2)
    np.testing.assert_allclose(mono, ref, atol=1e-6)

    pcm = np.round(x * 32767).astype(np.int16)  # (n, 2) int16
    from_int = _chunked(StreamingResampler(48000, channels=2), pcm, seed=3)
    np.testing.assert_allclose(from_int, ref, atol=2e-4)

    same = StreamingResampler(16000)
    chunk = tone(16000, 0.1)[:, 0]
    assert np.array_equal(same.push(chunk), chunk) and same.flush().size == 0
    assert np.array_equal(same.push(chunk[:, None]), chunk)  # (n, 1) is mono too


def test_streaming_resampler_validation():
    for kwargs, match in [
        ({"in_rate": 4000}, "outside the supported"),
        ({"in_rate": 400000}, "outside the supported"),
        ({"in_rate": 48000, "out_rate": 1000}, "outside the supported"),
        ({"in_rate": 44100.0}, "integer"),
        ({"in_rate": 48000, "channels": 0}, "channels"),
        ({"in_rate": 48000, "channels": 9}, "channels"),
    ]:
        with pytest.raises(AudioError, match=match):
            StreamingResampler(**kwargs)
    r = StreamingResampler(48000, channels=2)
    with pytest.raises(AudioError, match="shape"):
        r.push(np.zeros(10, np.float32))
    with pytest.raises(AudioError, match="shape"):
        r.push(np.zeros((10, 3), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        r.push(np.full((10, 2), np.nan, np.float32))
    with pytest.raises(AudioError, match="int16"):
        r.push(np.zeros((10, 2), np.int32))
