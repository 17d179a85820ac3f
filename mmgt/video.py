"""Video files: H.264 mp4 writing that never leaves a partial file, and frame reading.

:class:`Mp4Writer` encodes into a hidden temporary file next to the destination and renames it
into place only when :meth:`Mp4Writer.close` succeeds; on any error (or :meth:`abort`) the
temporary file is removed, so a failed render leaves nothing behind. Encoding runs on a
background thread, so rendering and encoding overlap. :func:`video_frames` decodes any video
PyAV reads into RGB frames with their times.
"""

from __future__ import annotations

import math
import os
import queue
import secrets
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from mmgt.errors import InputError
from mmgt.signals import interrupts_held

AUDIO_RATE = 48000  # AAC track rate
AAC_PRIMING = 1024  # samples FFmpeg's AAC encoder puts before the first input sample
_STOP = object()


def video_frames(path: str | os.PathLike[str]) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds after the first frame, (H, W, 3) uint8 RGB) for each decoded frame.

    A file that is not a video (or has no video stream) raises :class:`InputError`."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or 25)
            first = None
            for k, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else k / rate
                first = t if first is None else first
                yield t - first, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} could not be decoded as video: {exc}") from exc


def video_rate(path: str | os.PathLike[str]) -> float:
    """The average frame rate of a video file's first video stream."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path} has no video stream")
            rate = container.streams.video[0].average_rate
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} could not be decoded as video: {exc}") from exc
    if not rate:
        raise InputError(f"{path}: unknown frame rate")
    return float(rate)


def encode_jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    """(H, W, 3) uint8 RGB → JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _h264_stream(container: av.container.OutputContainer, width: int, height: int, fps: int,
                 options: dict[str, str]) -> av.video.stream.VideoStream:  # fmt: skip
    """A yuv420p H.264 stream; x264 threads capped at the core count (its default of 1.5
    threads per core oversubscribes small machines)."""
    if width % 2 or height % 2 or min(width, height) <= 0:
        raise ValueError(f"H.264 needs even frame sizes, got {width}×{height}")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.options = {"threads": str(max(1, os.cpu_count() or 1)), **options}
    return stream


def _video_frame(rgb: np.ndarray, pts: int, time_base: Fraction) -> av.VideoFrame:
    """An RGB uint8 image as a yuv420p frame at ``pts`` · ``time_base`` seconds."""
    # OpenCV's RGB → I420 is BT.601 limited range, as swscale's, at a tenth of the cost.
    frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    frame.pts, frame.time_base = pts, time_base
    return frame


def _audio_frame(samples: np.ndarray, pts: int, rate: int) -> av.AudioFrame:
    """Mono float32 samples as an audio frame starting at sample ``pts``."""
    frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
    frame.sample_rate, frame.pts, frame.time_base = rate, pts, Fraction(1, rate)
    return frame


class FragmentedMp4:
    """H.264 + AAC *fragmented* MP4, produced incrementally as bytes (for streaming to Media
    Source Extensions players or to a file as it grows).

    :meth:`encode` takes one frame and the audio that plays with it and returns whatever bytes
    the muxer finished: the initialisation segment (``ftyp`` + ``moov``) first, then ``moof`` +
    ``mdat`` fragments of about ``fragment_s`` seconds (often nothing until a fragment is
    complete). :meth:`close` flushes the encoders and returns the last fragment. The bytes
    concatenated are a valid MP4 file. x264 runs with ``zerolatency`` (no frame delay).
    """

    def __init__(
        self, size: int, *, fps: int = 25, audio_rate: int | None = AUDIO_RATE,
        fragment_s: float = 0.04, crf: int = 23, preset: str = "veryfast", gop_s: float = 2.0,
    ) -> None:  # fmt: skip
        self.fps, self.audio_rate = fps, audio_rate
        self._parts: list[bytes] = []
        # No edit list (Firefox's MSE drops video up to the next keyframe after every fragment
        # of a stream whose audio has one). The AAC priming is kept on the timeline instead:
        # the audio starts at 0 with it, the first video frame and the first real audio sample
        # at AAC_PRIMING samples, so both stay in sync for any player that follows timestamps.
        flags = "empty_moov+delay_moov+default_base_moof+frag_keyframe"
        self._container = av.open(
            _Sink(self._parts), mode="w", format="mp4",
            options={"movflags": flags, "frag_duration": str(max(1, int(fragment_s * 1e6))),
                     "use_editlist": "0"},
        )  # fmt: skip
        options = {"crf": str(crf), "preset": preset, "tune": "zerolatency",
                   "g": str(max(1, round(gop_s * fps)))}  # fmt: skip
        self._video = _h264_stream(self._container, size, size, fps, options)
        self._audio = None
        ticks = math.lcm(fps, audio_rate or fps)  # video ticks per second: frames and samples
        self._frame_ticks, self._start_ticks = ticks // fps, 0
        if audio_rate is not None:
            self._audio = self._container.add_stream("aac", rate=audio_rate)
            self._audio.layout = "mono"
            self._start_ticks = AAC_PRIMING * ticks // audio_rate
        self._video.codec_context.time_base = self._video.time_base = Fraction(1, ticks)
        self._frames = 0
        self._samples = 0
        self.closed = False

    def encode(self, rgb: np.ndarray, audio: np.ndarray | None = None) -> bytes:
        """Mux one (S, S, 3) uint8 frame and its mono float32 audio; returns finished bytes."""
        if self.closed:
            raise RuntimeError("the fragmented MP4 stream is closed")
        pts = self._start_ticks + self._frames * self._frame_ticks
        frame = _video_frame(rgb, pts, self._video.codec_context.time_base)
        self._container.mux(self._video.encode(frame))
        self._frames += 1
        if self._audio is not None and audio is not None and len(audio):
            samples = np.ascontiguousarray(audio, dtype=np.float32)
            start = AAC_PRIMING + self._samples  # its first packet (the priming) lands on 0
            self._container.mux(self._audio.encode(_audio_frame(samples, start,
                                                                self.audio_rate)))  # fmt: skip
            self._samples += len(samples)
        return self._take()

    def close(self) -> bytes:
        """Flush the encoders; returns the last bytes of the file."""
        if self.closed:
            return b""
        self.closed = True
        self._container.mux(self._video.encode(None))
        if self._audio is not None:
            self._container.mux(self._audio.encode(None))
        self._container.close()
        return self._take()

    def _take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


class _Sink:
    """A write-only, non-seekable file object collecting what the muxer writes."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)


class Mp4Writer:
    """H.264 (yuv420p) + optional AAC mp4 writer with an atomic rename on success.

    Args:
        path: destination file.
        size: frame size in pixels, ``side`` or ``(width, height)`` (both even).
        fps: frame rate.
        audio: mono float32 samples at ``audio_rate`` to mux, aligned so sample 0 plays with
            frame 0; ``None`` for a silent video.
        crf, preset: x264 quality and speed settings.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | tuple[int, int],
        *,
        fps: int = 25,
        audio: np.ndarray | None = None,
        audio_rate: int = AUDIO_RATE,
        crf: int = 20,
        preset: str = "veryfast",
    ) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".mp4":
            raise ValueError(f"output must be an .mp4 file, got {self.path.name}")
        self.width, self.height = (size, size) if isinstance(size, int) else size
        if self.width % 2 or self.height % 2 or min(self.width, self.height) <= 0:
            raise ValueError(f"H.264 needs even frame sizes, got {self.width}×{self.height}")
        self.fps = fps
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The hidden partial file is created by the first write (or close), so it exists only
        # once the caller holds the writer and can abort it: an interrupt (SIGTERM, Ctrl+C)
        # that lands while a writer is being made or handed over leaves nothing behind.
        self._tmp: Path | None = None
        self._container: av.container.OutputContainer | None = None
        self._x264 = {"crf": str(crf), "preset": preset}
        self.frames_written = 0
        self._frames_encoded = 0
        self._audio = None if audio is None else np.ascontiguousarray(audio, dtype=np.float32)
        self._audio_rate = audio_rate
        self._audio_pos = 0
        self._error: BaseException | None = None
        self._done = False
        self._aborting = False  # set by abort(): the encoder thread skips what is left
        self._queue: queue.Queue = queue.Queue(maxsize=32)
        self._thread = threading.Thread(target=self._run, name="mp4-encoder", daemon=True)
        with interrupts_held():  # a stop here must not leave a lock taken (mmgt.signals)
            self._thread.start()

    def _open(self) -> None:
        """Create the partial file and the container (in the producer's thread)."""
        try:
            # A fresh hidden name next to the destination, in the usual mode; named before
            # it is created, so the cleanup below always knows it (mkstemp's name is only
            # known once it returns).
            while True:
                self._tmp = self.path.with_name(
                    f".{self.path.stem}.{secrets.token_hex(4)}.part.mp4"
                )
                try:
                    os.close(os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                    break
                except FileExistsError:
                    continue
            container = av.open(str(self._tmp), mode="w", format="mp4")
            self._video = _h264_stream(container, self.width, self.height, self.fps, self._x264)
            self._astream = None
            if self._audio is not None:
                self._astream = container.add_stream("aac", rate=self._audio_rate)
                self._astream.layout = "mono"
            self._container = container
        except BaseException:  # including an interrupt: no partial file stays
            self._discard()
            raise

    # -- producer side -----------------------------------------------------------------------
    def write(self, frame: np.ndarray) -> None:
        """Queue one (height, width, 3) uint8 RGB frame."""
        if self._done:
            raise RuntimeError("writer is closed")
        if self._error is not None:
            raise RuntimeError(f"video encoding failed: {self._error}") from self._error
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"expected a ({self.height}, {self.width}, 3) uint8 frame, got {frame.shape}"
            )
        if self._container is None:
            self._open()
        with interrupts_held():
            self._queue.put(frame)
        self.frames_written += 1

    def close(self) -> Path:
        """Finish encoding and move the file into place; returns the final path."""
        if self._done:
            return self.path
        try:
            if self._container is None and self._error is None:
                self._open()  # a video without frames
            with interrupts_held():
                self._queue.put(_STOP)
            self._thread.join()
            with interrupts_held():  # from here the file is moved into place or deleted
                return self._move_into_place()
        except BaseException:  # including a stop while the last frames encode
            self.abort()
            raise

    def _move_into_place(self) -> Path:
        self._done = True
        if self._error is not None:
            raise RuntimeError(f"video encoding failed: {self._error}") from self._error
        self._tmp.replace(self.path)
        return self.path

    def abort(self) -> None:
        """Stop at once (queued frames are not encoded) and delete the partial file."""
        if not self._done:
            self._aborting = True
            with interrupts_held():
                self._queue.put(_STOP)
                self._thread.join()
            self._done = True
        self._discard()

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- encoder thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not _STOP:
                if self._error is None and not self._aborting:
                    self._encode_video(item)
            if self._error is None and not self._aborting:
                self._finish()
        except BaseException as exc:  # reported to the producer by write()/close()
            self._error = exc
            while self._queue.get() is not _STOP:  # drain so the producer never blocks
                pass
        finally:
            try:
                if self._container is not None:
                    self._container.close()
            except Exception as exc:  # noqa: BLE001 - keep the first error
                self._error = self._error or exc

    def _encode_video(self, rgb: np.ndarray) -> None:
        frame = _video_frame(rgb, self._frames_encoded, Fraction(1, self.fps))
        self._frames_encoded += 1
        index = self._frames_encoded
        self._container.mux(self._video.encode(frame))
        # Interleave the audio that plays during this frame.
        if self._audio is not None:
            self._encode_audio(int(round(index * self._audio_rate / self.fps)))

    def _encode_audio(self, until: int) -> None:
        until = min(until, len(self._audio))
        if until <= self._audio_pos:
            return
        frame = _audio_frame(
            self._audio[self._audio_pos : until], self._audio_pos, self._audio_rate
        )
        self._audio_pos = until
        self._container.mux(self._astream.encode(frame))

    def _finish(self) -> None:
        if self._audio is not None:
            self._encode_audio(len(self._audio))
        self._container.mux(self._video.encode(None))
        if self._astream is not None:
            self._container.mux(self._astream.encode(None))

    def _discard(self) -> None:
        try:
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
        except OSError:
            pass
