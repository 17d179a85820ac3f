"""Fakes for engine tests: cheap renderers that record what they were given."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.scheduler import StreamScheduler, StreamSettings
from mmgt.drivers import ProceduralDriver
from mmgt.types import KeypointSeq
from tests.helpers import synthetic_reference_pose

SIZE = 64


def index_image(index: int) -> np.ndarray:
    """A tiny frame that carries its index in its pixels."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[0, 0] = (index % 256, (index // 256) % 256, index // 65536)
    return img


def image_index(img: np.ndarray) -> int:
    r, g, b = (int(v) for v in img[0, 0])
    return r + 256 * g + 65536 * b


class FrameStream:
    """Frame-wise: one image per pose, no latency; records the poses it saw."""

    window = 1
    latency_frames = 0

    def __init__(self, log: list[KeypointSeq]) -> None:
        self.log = log
        self.closed = False

    def push(self, poses, masks=None, audio=None):  # noqa: ANN001, ANN201
        self.log.append(poses)
        return [index_image(poses.start_frame + k) for k in range(len(poses))]

    def flush(self):  # noqa: ANN201
        return []

    def close(self) -> None:
        self.closed = True


class WindowStream:
    """A window renderer: emits frames only when a 12-frame window with 4 frames of overlap
    is complete (like the diffusion renderer), holding the rest back."""

    window = 12
    overlap = 4
    latency_frames = 12

    def __init__(self) -> None:
        self.pending: list[int] = []

    def push(self, poses, masks=None, audio=None):  # noqa: ANN001, ANN201
        self.pending.extend(poses.start_frame + k for k in range(len(poses)))
        out = []
        while len(self.pending) >= self.window:
            done = self.pending[: self.window - self.overlap]
            self.pending = self.pending[self.window - self.overlap :]
            out.extend(index_image(i) for i in done)
        return out

    def flush(self):  # noqa: ANN201
        out = [index_image(i) for i in self.pending]
        self.pending = []
        return out

    def close(self) -> None:
        pass


@dataclass
class Recorder:
    poses: list[KeypointSeq]
    streams: list


def make_scheduler(
    *,
    window: bool = False,
    driver=None,  # noqa: ANN001
    vad: bool = False,
    input_rate: int = 16000,
    **settings,
) -> tuple[StreamScheduler, Recorder]:
    rec = Recorder([], [])

    def factory():  # noqa: ANN202
        stream = WindowStream() if window else FrameStream(rec.poses)
        rec.streams.append(stream)
        return stream

    vad_factory = None
    if vad:
        from engine.vad import VoiceActivity

        vad_factory = VoiceActivity
    settings.setdefault("output_rate", 16000)
    settings.setdefault("vad", vad)
    ref = synthetic_reference_pose() * np.array([SIZE / 512, SIZE / 512, 1], np.float32)
    sched = StreamScheduler(
        driver or ProceduralDriver(),
        factory,
        ref,
        SIZE,
        input_rate=input_rate,
        settings=StreamSettings(**settings),
        vad_factory=vad_factory,
    )
    return sched, rec
