"""Transport frames: what a session emits, in presentation order, with pts.

Video runs at ``fps`` frames per second; video frame ``index`` has pts ``index / fps`` seconds.
Each video frame is followed by the audio that plays with it: ``samples_per_frame`` samples at
``sample_rate`` starting at sample ``index * samples_per_frame``. Because a frame and its audio
leave the engine together, the audio sent back is delayed by exactly the video pipeline's
latency and lips and sound stay together; video pts − audio pts is constant (zero) by
construction.

Model-level types (keypoints, masks, features) live in :mod:`mmgt.types`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class VideoFrame:
    """One rendered frame.

    Attributes:
        index: frame number in the session (pts in units of 1 / fps).
        fps: frame rate.
        image: (S, S, 3) uint8 RGB.
        source_time: ``time.monotonic()``-style clock reading when the newest audio this frame
            shows had arrived (for latency figures), or None for idle frames made of silence.
    """

    index: int
    fps: int
    image: np.ndarray
    source_time: float | None = None

    @property
    def pts(self) -> float:
        """Presentation time in seconds."""
        return self.index / self.fps


@dataclass(frozen=True, slots=True, eq=False)
class AudioFrame:
    """The audio that plays with video frame ``index``: mono float32 in [−1, 1].

    Attributes:
        index: the video frame this audio belongs to.
        sample_rate: output rate (a multiple of the frame rate).
        start_sample: pts in samples (``index * len(samples)``).
        samples: (sample_rate / fps,) float32.
    """

    index: int
    sample_rate: int
    start_sample: int
    samples: np.ndarray

    @property
    def pts(self) -> float:
        return self.start_sample / self.sample_rate

    def pcm16(self) -> bytes:
        """Little-endian signed 16-bit PCM."""
        return (np.clip(self.samples, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Speech started (``speech=True``) or ended, at the start of video frame ``index``."""

    index: int
    speech: bool
    probability: float


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    """The segment closed by ``Session.end_segment`` finished playing with frame ``index``."""

    index: int
    segment: int


@dataclass(frozen=True, slots=True)
class Mark:
    """The point of the audio marked by ``Session.mark(name)`` plays during frame ``index``,
    ``t`` seconds into the session's timeline (e.g. a word of a caption begins there)."""

    index: int
    name: str
    t: float


@dataclass(frozen=True, slots=True)
class Interrupted:
    """``Session.interrupt`` took effect: frames after ``played_frames`` were dropped.

    Attributes:
        played_frames: number of frames handed to the consumer before the interrupt.
        played_s: the same as seconds of the session's timeline.
        dropped_frames: rendered frames discarded from the queue.
        dropped_audio_s: queued input audio discarded before it was rendered.
    """

    played_frames: int
    played_s: float
    dropped_frames: int
    dropped_audio_s: float


@dataclass(frozen=True, slots=True)
class StateEvent:
    """Session state changes: ``running``, ``degraded`` (with a level), ``recovered``, ``closed``,
    and ``error`` for input refused inside the engine (``code``: ``bad_audio`` or
    ``buffer_full``; the session goes on).

    ``detail`` says why (e.g. "stage-1 steps 4 → 1").
    """

    index: int
    state: str
    detail: str = ""
    level: int = 0
    code: str = ""


OutputFrame = VideoFrame | AudioFrame | VadEvent | SegmentEnd | Mark | Interrupted | StateEvent
