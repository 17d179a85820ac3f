"""Audio decoding and resampling: any file PyAV/FFmpeg can read → mono float32 at 16 kHz.

Everything downstream (features, drivers, VAD) works on mono float32 in [-1, 1] at
:data:`SAMPLE_RATE`. :func:`load_audio` does that for whole files or in-memory bytes;
:class:`StreamingResampler` does it for live chunks (microphone, WebRTC, websockets). Every problem
a user can cause (missing/corrupt/empty/NaN/too long audio, bad rates) raises
:class:`~mmgt.errors.AudioError` with a message that names it; no PyAV or soxr exception escapes.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import av
import numpy as np
import soxr

from mmgt.errors import AudioError

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_RATE, MAX_RATE = 8000, 192000
MAX_CHANNELS = 8
# Tolerate a few undecodable packets (as the ffmpeg CLI does), but not a mostly corrupt file.
_MAX_BAD_PACKET_FRACTION = 0.05

# PyAV sample format → (dtype of to_ndarray, scale to [-1, 1], offset).
_FORMATS = {
    "u8": (1 / 128, -128.0),
    "s16": (1 / 32768, 0.0),
    "s32": (1 / 2**31, 0.0),
    "s64": (1 / 2**63, 0.0),
    "flt": (1.0, 0.0),
    "dbl": (1.0, 0.0),
}


def _check_rate(rate: int, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer):
        raise AudioError(f"{what} must be an integer number of Hz, got {rate!r}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(f"{what} {rate} Hz is outside the supported {MIN_RATE}–{MAX_RATE} Hz")
    return int(rate)


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """One decoded frame → (samples,) float32 mono (mean of the channels)."""
    name = frame.format.name
    planar = name.endswith("p")
    scale, offset = _FORMATS[name.rstrip("p")]
    channels = frame.layout.nb_channels
    arr = frame.to_ndarray()  # planar: (C, n); packed: (1, n·C) interleaved
    if not planar:
        arr = arr.reshape(-1, channels).T  # (C, n)
    data = arr.astype(np.float64)
    if offset:
        data += offset
    mono = data.mean(axis=0) if channels > 1 else data[0]  # (n,)
    return (mono * scale).astype(np.float32)


def _decode(
    container: av.container.InputContainer, label: str, max_seconds: float
) -> tuple[np.ndarray, int]:
    """Decode the first audio stream to (mono float32 samples, sample rate)."""
    if not container.streams.audio:
        raise AudioError(f"{label} has no audio stream")
    stream = container.streams.audio[0]
    chunks: list[np.ndarray] = []
    rate: int | None = None
    total = bad = packets = 0
    last_error = ""
    for packet in container.demux(stream):
        packets += 1
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:  # one corrupt packet: skip it, count it
            bad += 1
            last_error = getattr(exc, "strerror", None) or str(exc)
            continue
        for frame in frames:
            if frame.format.name.rstrip("p") not in _FORMATS:
                raise AudioError(f"{label}: unsupported sample format {frame.format.name!r}")
            if rate is None:
                rate = int(frame.sample_rate)
                if rate <= 0:
                    raise AudioError(f"{label} declares an invalid sample rate ({rate} Hz)")
            elif frame.sample_rate != rate:
                raise AudioError(
                    f"{label}: sample rate changes mid-stream ({rate} → "
                    f"{frame.sample_rate} Hz), which is not supported"
                )
            mono = _frame_to_mono(frame)
            chunks.append(mono)
            total += mono.size
            if total > max_seconds * rate:
                raise AudioError(f"{label} is longer than the limit of {max_seconds:g} s")
    if bad and (total == 0 or bad > _MAX_BAD_PACKET_FRACTION * packets):
        raise AudioError(
            f"{label} has corrupt audio data ({bad} of {packets} packets could "
            f"not be decoded: {last_error})"
        )
    if bad:
        log.warning("%s: skipped %d undecodable packets of %d", label, bad, packets)
    if total == 0 or rate is None:
        raise AudioError(f"{label} contains no audio samples (empty audio)")
    if stream.duration and stream.time_base:  # truncated/damaged files decode only in part
        declared = float(stream.duration * stream.time_base)
        if total / rate < 0.9 * declared - 0.5:
            log.warning(
                "%s: decoded %.2f s of the %.2f s it declares", label, total / rate, declared
            )
    return np.concatenate(chunks), rate


def load_audio_native(
    source: str | os.PathLike | bytes, *, max_seconds: float = 3600
) -> tuple[np.ndarray, int]:
    """Decode a file (path) or encoded bytes to mono float32 at its own sample rate.

    Returns (samples, rate). Same checks as :func:`load_audio`, without resampling (the
    official EDGE features resample the original file themselves).
    """
    if not max_seconds > 0:
        raise AudioError(f"max_seconds must be positive, got {max_seconds!r}")
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise AudioError("the audio data is empty (0 bytes)")
        label, target = "the audio data", io.BytesIO(data)
    else:
        path = Path(os.fspath(source))
        label, target = f"audio file {str(path)!r}", str(path)
        if not path.exists():
            raise AudioError(f"{label} does not exist")
        if not path.is_file():
            raise AudioError(f"{label} is not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(f"{label} is empty (0 bytes)")
    try:
        with av.open(target, mode="r") as container:
            samples, rate = _decode(container, label, max_seconds)
    except AudioError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise AudioError(f"{label} is not audio or is corrupt (FFmpeg: {reason})") from exc
    if not np.isfinite(samples).all():
        raise AudioError(f"{label} contains NaN or infinite samples")
    return samples, rate


def load_audio(
    source: str | os.PathLike | bytes,
    *,
    sample_rate: int = SAMPLE_RATE,
    max_seconds: float = 3600,
) -> np.ndarray:
    """Decode a file (path) or encoded bytes to mono float32 in [-1, 1] at ``sample_rate``.

    Reads anything FFmpeg reads (wav, mp3, flac, ogg/vorbis/opus, m4a, …) at any rate and channel
    count; channels are averaged, the rate is converted with soxr HQ, so the duration is kept.
    Raises :class:`AudioError` for a missing file, non-audio or corrupt data, empty audio,
    NaN/Inf samples, or audio longer than ``max_seconds``.
    """
    sample_rate = _check_rate(sample_rate, "target sample_rate")
    samples, rate = load_audio_native(source, max_seconds=max_seconds)
    if rate != sample_rate:
        label = (
            "the audio data" if isinstance(source, bytes | bytearray | memoryview) else str(source)
        )
        try:
            samples = soxr.resample(samples, rate, sample_rate, quality="HQ")  # (n·sr/rate,)
        except (RuntimeError, ValueError) as exc:  # pragma: no cover - soxr rarely fails
            raise AudioError(
                f"{label}: resampling {rate} → {sample_rate} Hz failed: {exc}"
            ) from exc
    # Float files may exceed full scale and resampling can overshoot slightly: keep [-1, 1].
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def pcm16_to_float(data: bytes, channels: int) -> np.ndarray:
    """Interleaved little-endian PCM16 bytes → (n,) mono float32 in [-1, 1] (channel mean)."""
    if (
        isinstance(channels, bool)
        or not isinstance(channels, int)
        or not 1 <= channels <= MAX_CHANNELS
    ):
        raise AudioError(f"channels must be an integer in 1…{MAX_CHANNELS}, got {channels!r}")
    frame_bytes = 2 * channels
    if len(data) % frame_bytes:
        raise AudioError(
            f"PCM16 data of {len(data)} bytes is not a whole number of "
            f"{channels}-channel frames ({frame_bytes} bytes each)"
        )
    pcm = np.frombuffer(data, dtype="<i2").reshape(-1, channels)  # (n, C)
    mono = pcm[:, 0].astype(np.float32) if channels == 1 else pcm.mean(axis=1, dtype=np.float32)
    return mono * np.float32(1 / 32768)


def _check_channels(channels: int) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int | np.integer):
        raise AudioError(f"channels must be an integer, got {channels!r}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(f"{channels} channels are not supported (1…{MAX_CHANNELS})")
    return int(channels)


def _checked_samples(chunk: np.ndarray, channels: int) -> np.ndarray:
    """A (n,) or (n, C) float or int16 chunk of finite samples, else an AudioError."""
    arr = np.asarray(chunk)
    if arr.dtype != np.int16 and arr.dtype.kind != "f":
        raise AudioError(f"audio chunks must be float32/float64 or int16, got {arr.dtype}")
    if not (arr.ndim == 2 and arr.shape[1] == channels or arr.ndim == 1 and channels == 1):
        expected = "(n,) or (n, 1)" if channels == 1 else f"(n, {channels})"
        raise AudioError(f"audio chunk must have shape {expected}, got {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise AudioError("audio chunk contains NaN or infinite samples")
    return arr


def check_chunk(chunk: np.ndarray, sample_rate: int, channels: int) -> np.ndarray:
    """Validate a chunk of live audio where it is handed in (rate, channel count, dtype, shape,
    finite samples), so the caller gets the :class:`AudioError`; returns it as an array."""
    _check_rate(sample_rate, "sample rate")
    return _checked_samples(chunk, _check_channels(channels))


def _to_mono(chunk: np.ndarray, channels: int) -> np.ndarray:
    """Validate a (n,) or (n, C) float/int16 chunk; return (n,) float32 mono."""
    arr = _checked_samples(chunk, channels)
    if arr.dtype == np.int16:
        arr = arr.astype(np.float32) * np.float32(1 / 32768)
    if arr.ndim == 2:
        arr = arr[:, 0] if channels == 1 else arr.mean(axis=1)  # (n,)
    return np.ascontiguousarray(arr, dtype=np.float32)


class StreamingResampler:
    """Chunks of (n,) / (n, channels) audio at ``in_rate`` → mono float32 at ``out_rate``.

    Channels are averaged before resampling (cheaper, same result as resampling each channel).
    Uses ``soxr.ResampleStream`` (HQ), which holds back a few ms of filter delay; :meth:`flush`
    returns that tail and starts a fresh stream. Equal rates pass the audio through unchanged.
    """

    def __init__(self, in_rate: int, channels: int = 1, out_rate: int = SAMPLE_RATE) -> None:
        self.in_rate = _check_rate(in_rate, "input sample rate")
        self.out_rate = _check_rate(out_rate, "output sample rate")
        self.channels = _check_channels(channels)
        self._stream = self._new_stream()
        self._taken = self._given = 0  # input / output samples of the current stream

    def _new_stream(self) -> soxr.ResampleStream | None:
        if self.in_rate == self.out_rate:
            return None
        return soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality="HQ")

    @property
    def held_back(self) -> int:
        """Output samples owed for the input pushed so far (the filter delay): the end of the
        input is this far past the end of the output."""
        return max(0, self._taken * self.out_rate // self.in_rate - self._given)

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Resample one chunk; returns the (m,) float32 output available so far (may be empty)."""
        mono = _to_mono(chunk, self.channels)
        if self._stream is None:
            return mono
        out = self._stream.resample_chunk(mono)
        self._taken += mono.shape[0]
        self._given += out.shape[0]
        return out

    def flush(self) -> np.ndarray:
        """Return the held-back tail and reset, ready for a new stream."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self._stream = self._new_stream()
        self._taken = self._given = 0
        return tail


def write_wav(path: str | os.PathLike, samples: np.ndarray, sample_rate: int) -> None:
    """Write (n,) or (n, C) float in [-1, 1] (clipped) or int16 samples as 16-bit PCM wav."""
    import soundfile as sf

    arr = np.asarray(samples)
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise AudioError(f"write_wav needs (n,) or (n, C) samples with n > 0, got {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise AudioError("write_wav: samples contain NaN or infinite values")
        arr = np.clip(arr, -1.0, 1.0)
    elif arr.dtype != np.int16:
        raise AudioError(f"write_wav needs float or int16 samples, got {arr.dtype}")
    sf.write(os.fspath(path), arr, int(sample_rate), subtype="PCM_16", format="WAV")
