"""Model-level vocabulary shared by every stage: keypoints, audio features, masks, avatars, and
the ``Driver`` / ``Renderer`` protocols.

Frames at this level are numpy arrays with explicit frame indices. Transport frames with pts
(video/audio frames for WebRTC and websockets) live in ``engine.frames``, not here.

Conventions:

* Video runs at ``fps`` (25 for MMGT). Frame ``i`` covers audio samples
  ``[i * sr / fps, (i + 1) * sr / fps)``.
* Keypoints are (x, y, score) in pixels of a square ``frame_size`` frame (134-point layout of
  :mod:`mmgt.keypoints.layout`), score in [0, 1]. The official normalised 402-vector is available
  through :meth:`KeypointSeq.official`.
* Images are RGB ``uint8`` arrays of shape (S, S, 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from mmgt.errors import InputError
from mmgt.keypoints import layout

MAX_FRAME_SIZE = 2048  # 16× the pixels of 512²; far larger sides exhaust memory or the encoder


def check_frame_size(size: int, flag: str = "the frame size") -> int:
    """``size`` if it is a video side the engine makes (a multiple of 64 up to 2048), else an
    :class:`~mmgt.errors.InputError` naming ``flag``."""
    if not 64 <= size <= MAX_FRAME_SIZE or size % 64:
        raise InputError(f"{flag} must be a multiple of 64 in 64…{MAX_FRAME_SIZE}, got {size}")
    return size


FPS = 25


@dataclass(frozen=True, slots=True)
class KeypointSeq:
    """A sequence of whole-body keypoints.

    Attributes:
        points: (T, 134, 3) float32, x/y in pixels of a ``frame_size`` square, score in [0, 1].
        frame_size: side of the square pixel frame the coordinates refer to.
        fps: frame rate.
        start_frame: absolute index of ``points[0]`` in its stream.
    """

    points: np.ndarray
    frame_size: int = layout.OFFICIAL_FRAME
    fps: float = FPS
    start_frame: int = 0

    def __post_init__(self) -> None:
        pts = np.asarray(self.points, dtype=np.float32)
        if pts.ndim != 3 or pts.shape[1:] != (layout.NUM_KEYPOINTS, layout.NUM_CHANNELS):
            raise ValueError(f"KeypointSeq.points must be (T, 134, 3), got {pts.shape}")
        object.__setattr__(self, "points", pts)

    def __len__(self) -> int:
        return self.points.shape[0]

    @property
    def stop_frame(self) -> int:
        """Absolute index one past the last frame."""
        return self.start_frame + len(self)

    def official(self) -> np.ndarray:
        """(T, 402) float32 in the official normalisation (v/500 − 0.6 in a 512 frame)."""
        return layout.normalize(self.points, self.frame_size)

    @classmethod
    def from_official(
        cls,
        normalized: np.ndarray,
        *,
        frame_size: int = layout.OFFICIAL_FRAME,
        fps: float = FPS,
        start_frame: int = 0,
    ) -> KeypointSeq:
        """Build from (T, 402) official normalised vectors."""
        return cls(layout.denormalize(normalized, frame_size), frame_size, fps, start_frame)

    def frames(self, start: int, stop: int) -> KeypointSeq:
        """Frames with absolute indices ``[start, stop)`` (must lie inside this sequence)."""
        if not self.start_frame <= start <= stop <= self.stop_frame:
            raise IndexError(
                f"frames [{start}, {stop}) outside [{self.start_frame}, {self.stop_frame})"
            )
        lo, hi = start - self.start_frame, stop - self.start_frame
        return KeypointSeq(self.points[lo:hi], self.frame_size, self.fps, start)

    def resized(self, frame_size: int) -> KeypointSeq:
        """The same poses in another square frame size."""
        pts = layout.to_pixels(self.points, self.frame_size, frame_size)
        return KeypointSeq(pts, frame_size, self.fps, self.start_frame)

    @staticmethod
    def concat(parts: Sequence[KeypointSeq]) -> KeypointSeq:
        """Join consecutive sequences (each must start where the previous one stops)."""
        if not parts:
            raise ValueError("nothing to concatenate")
        for a, b in zip(parts, parts[1:], strict=False):
            if b.start_frame != a.stop_frame or b.frame_size != a.frame_size:
                raise ValueError("KeypointSeq.concat needs contiguous parts of one frame size")
        first = parts[0]
        pts = np.concatenate([p.points for p in parts], axis=0)
        return KeypointSeq(pts, first.frame_size, first.fps, first.start_frame)


# AudioFeatures kind of raw speech rows: 16 kHz PCM, one row of 16000 / fps samples per frame
# (renderers that run their own audio encoder, e.g. stage 2's wav2vec2, ask for it).
PCM_AUDIO_KIND = "pcm16k"


@dataclass(frozen=True, slots=True)
class AudioFeatures:
    """Per-video-frame audio features.

    Attributes:
        values: (T, D) float32, row i describes frame ``start_frame + i``.
        fps: frame rate of the rows.
        start_frame: absolute frame index of ``values[0]``.
        kind: the extractor that produced them (drivers check it), e.g. ``"light-v1"``.
    """

    values: np.ndarray
    fps: float = FPS
    start_frame: int = 0
    kind: str = "light-v1"

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float32)
        if v.ndim != 2:
            raise ValueError(f"AudioFeatures.values must be (T, D), got {v.shape}")
        object.__setattr__(self, "values", v)

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def stop_frame(self) -> int:
        return self.start_frame + len(self)

    def frames(self, start: int, stop: int) -> AudioFeatures:
        """Rows with absolute frame indices ``[start, stop)``."""
        if not self.start_frame <= start <= stop <= self.stop_frame:
            raise IndexError(
                f"frames [{start}, {stop}) outside [{self.start_frame}, {self.stop_frame})"
            )
        lo, hi = start - self.start_frame, stop - self.start_frame
        return AudioFeatures(self.values[lo:hi], self.fps, start, self.kind)


# Raw mask names. "face_hands" is the official "face" video (face box + hand boxes, uint8 sum);
# "background" is its complement. "body" is the paper's limb mask (arm segments and shoulder line)
# plus the torso below the shoulders.
MASK_NAMES = ("face", "face_hands", "lips", "hands", "body", "background")


@dataclass(frozen=True, slots=True)
class MaskSet:
    """Motion masks of one frame (the paper's Algorithm 1).

    Attributes:
        frame_index: absolute frame index.
        raw: name → (S, S) uint8 box mask, 0 outside and 255 inside (official quirk: 254 in
            "face_hands" where face and hand boxes overlap, so 1 in "background" there). May be
            empty when the producer was asked not to keep full-size masks.
        pyramid: name → levels, each (S/8 · 2^-l)² float32 in [0, 1] (64/32/16/8 for S = 512),
            blurred and min-max stretched as in the official post-processing.
    """

    frame_index: int
    raw: Mapping[str, np.ndarray] = field(default_factory=dict)
    pyramid: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class Avatar:
    """A prepared reference photo and its reference pose.

    Attributes:
        name: a label for logs and caches.
        image: (S, S, 3) uint8 RGB, already cropped and resized to the output size.
        reference_pose: (134, 3) float32 keypoints of ``image`` (pixels, score).
        face_mesh: (478, 3) float32 dense face landmarks (x, y in pixels, z relative), or None.
        notes: what about the photo may spoil the result (a face turned away, several people),
            one sentence each, for the user to read; the avatar works regardless.
    """

    name: str
    image: np.ndarray
    reference_pose: np.ndarray
    face_mesh: np.ndarray | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        img = self.image
        square = img.ndim == 3 and img.shape[2] == 3 and img.shape[0] == img.shape[1]
        if not square or img.dtype != np.uint8:
            raise ValueError(f"Avatar.image must be (S, S, 3) uint8, got {img.shape} {img.dtype}")
        pose = np.asarray(self.reference_pose, dtype=np.float32)
        if pose.shape != (layout.NUM_KEYPOINTS, layout.NUM_CHANNELS):
            raise ValueError(f"Avatar.reference_pose must be (134, 3), got {pose.shape}")
        object.__setattr__(self, "reference_pose", pose)

    @property
    def frame_size(self) -> int:
        return int(self.image.shape[0])

    @property
    def key(self) -> str:
        """Content hash of the image and pose: the cache key for per-avatar state."""
        h = hashlib.sha256(self.image.tobytes())
        h.update(self.reference_pose.tobytes())
        return h.hexdigest()[:16]


@runtime_checkable
class Driver(Protocol):
    """Audio features + reference pose → keypoints (procedural, SMGA, …).

    ``generate`` takes the features of one window and the (134, 3) reference pose in pixels of a
    ``frame_size`` square. If ``committed`` is given it holds frames already emitted, which are
    the first ``len(committed)`` frames of that window (``committed.start_frame ==
    features.start_frame``); the driver continues from them without a seam. It returns the new
    frames only: ``len(features) − len(committed)`` frames starting at
    ``features.start_frame + len(committed)``. ``context_frames`` is the look-behind a window
    needs so that windowed generation matches whole-clip generation.
    """

    name: str
    feature_kind: str
    context_frames: int

    def generate(
        self,
        features: AudioFeatures,
        reference_pose: np.ndarray,
        committed: KeypointSeq | None = None,
        *,
        frame_size: int = layout.OFFICIAL_FRAME,
    ) -> KeypointSeq: ...


@runtime_checkable
class RenderStream(Protocol):
    """One session's rendering state (overlap buffers, latents of frames already emitted, …).

    ``push`` takes consecutive frames (poses, and masks/audio features if the renderer needs
    them) and returns the frames finished so far, in order, as (S, S, 3) uint8 RGB arrays.
    Frame-wise renderers return one frame per pose; window renderers may hold frames back
    (``latency_frames``) and work in ``window``-frame windows. ``flush`` returns what is held.
    """

    window: int
    latency_frames: int

    def push(
        self,
        poses: KeypointSeq,
        masks: Sequence[MaskSet] | None = None,
        audio: AudioFeatures | None = None,
    ) -> list[np.ndarray]: ...

    def flush(self) -> list[np.ndarray]: ...

    def close(self) -> None: ...


@runtime_checkable
class Renderer(Protocol):
    """Reference image + keypoint frames (+ masks, audio) → RGB frames.

    ``prepare`` computes per-avatar state once; it is read-only afterwards and shared by all
    sessions of that avatar. ``open_stream`` makes one :class:`RenderStream` per session.
    """

    name: str
    needs_masks: bool
    needs_audio: bool

    def prepare(self, avatar: Avatar) -> object: ...

    def open_stream(self, state: object) -> RenderStream: ...
