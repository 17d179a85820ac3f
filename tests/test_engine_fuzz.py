"""Random operation sequences on the scheduler: whatever the order of pushes (any chunking,
rate and channel count), steps, marks, segment ends, idle silence and interrupts, the output
keeps its invariants (frames in order, each with its own audio, nothing lost or repeated),
with and without load-driven degradation (which may hold the last image, never the audio)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from engine.clock import VirtualClock
from engine.frames import AudioFrame, Interrupted, Mark, SegmentEnd, VideoFrame
from engine.session import Session
from mmgt.audio.features import HOP, LOOKAHEAD_SAMPLES
from mmgt.drivers.controls import MotionControls
from tests.engine_fakes import image_index, make_scheduler

FORMATS = [(16000, 1), (48000, 1), (44100, 2), (8000, 1), (22050, 2)]


def _random_session(seed: int, window: bool, realtime: bool) -> tuple[list, int]:
    """Drive one scheduler through a random sequence; return its output (with each interrupt's
    result in place) and the 16 kHz timeline length at the end. ``realtime``: steps see a
    clock that runs at a random pace, so the scheduler degrades and recovers."""
    rng = np.random.default_rng(seed)
    rate, channels = FORMATS[0]
    hop = int(rng.integers(1, 6))
    sched, _ = make_scheduler(
        window=window, output_rate=48000, hop_frames=hop, realtime=realtime,
        degrade_lag_frames=2, recover_after_s=0.3,
    )  # fmt: skip
    now = 0.0
    out: list = []
    for _ in range(int(rng.integers(40, 120))):
        op = rng.choice(["push", "push", "push", "step", "step", "mark", "end", "idle", "int",
                         "format", "motion"])  # fmt: skip
        if op == "motion":
            sched.motion = MotionControls(*rng.uniform(0.0, 1.0, 4))
        elif op == "format":
            rate, channels = FORMATS[int(rng.integers(len(FORMATS)))]
        elif op == "push":
            n = int(rng.integers(1, 6000))
            chunk = (0.2 * rng.standard_normal((n, channels) if channels > 1 else n)).astype(
                np.float32
            )
            sched.push_audio(chunk, rate, channels, None)
        elif op == "step":
            for _ in range(int(rng.integers(1, 8))):
                now += float(rng.uniform(0.0, 0.1))
                clock = now if realtime else None
                out.extend(sched.step(clock, starving=bool(rng.integers(2))))
        elif op == "mark":
            sched.mark(f"m{len(out)}")
        elif op == "end":
            sched.end_segment()
        elif op == "idle":
            sched.fill_silence(sched.samples + int(rng.integers(1, 4000)))
        elif op == "int":
            shown = [f.index for f in out if isinstance(f, VideoFrame)]
            played = int(rng.integers(shown[-1] - 10, shown[-1] + 2)) if shown else 0
            out.append(sched.interrupt(max(played, 0)))
    sched.end_segment()
    while got := sched.step(None):
        out.extend(got)
    out.extend(sched.drain())
    return out, sched.samples


@pytest.mark.parametrize("realtime", [False, True])
@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("seed", range(10))
def test_random_operations_keep_the_output_invariants(seed, window, realtime):
    out, samples = _random_session(seed, window, realtime)
    expected_next = 0
    last_video: VideoFrame | None = None
    for k, item in enumerate(out):
        if isinstance(item, Interrupted):
            # Playback resumes at the frame the interrupt reports as played.
            assert item.played_frames <= expected_next
            expected_next = item.played_frames
            last_video = None
        elif isinstance(item, VideoFrame):
            assert item.index == expected_next, f"frame {item.index}, expected {expected_next}"
            shown = image_index(item.image)  # the renderer drew this frame's pose, or a hold
            held = last_video is not None and shown == image_index(last_video.image)
            assert shown == item.index or (realtime and held)
            follow = out[k + 1]
            assert isinstance(follow, AudioFrame) and follow.index == item.index
            assert follow.pts == item.pts and follow.samples.shape == (48000 // 25,)
            assert np.isfinite(follow.samples).all()
            expected_next += 1
            last_video = item
        elif isinstance(item, AudioFrame):
            assert last_video is not None and item.index == last_video.index
        elif isinstance(item, SegmentEnd | Mark):
            assert item.index <= expected_next + 1
    # Every frame of the timeline came out; the last segment end padded the timeline to a
    # whole frame plus the features' look-ahead.
    assert expected_next == (samples - LOOKAHEAD_SAMPLES) // HOP
    assert (samples - LOOKAHEAD_SAMPLES) % HOP == 0


async def _random_live_session(seed: int, window: bool) -> list:
    """A Session on a virtual clock through random pushes, pauses, marks, segment ends and
    interrupts, with a consumer that reads at its own pace; returns everything it read."""
    rng = np.random.default_rng(seed)
    clock = VirtualClock()
    sched, _ = make_scheduler(window=window, output_rate=24000, hop_frames=int(rng.integers(1, 5)))
    session = Session(sched, clock=clock, name=f"fuzz{seed}")
    got: list = []

    async def consume() -> None:
        async for item in session:
            got.append(item)
            if rng.random() < 0.05:
                await asyncio.sleep(0.002)  # a consumer that sometimes lags

    consumer = asyncio.create_task(consume())
    rate = 16000
    for _ in range(int(rng.integers(30, 80))):
        op = rng.choice(["push", "push", "push", "wait", "wait", "mark", "end", "int", "rate",
                         "motion"])  # fmt: skip
        if op == "motion":
            session.set_motion(MotionControls(*rng.uniform(0.0, 1.0, 4)))
        elif op == "rate":
            rate = int(rng.choice([8000, 16000, 44100, 48000]))
        elif op == "push":
            n = int(rng.integers(1, rate // 2))
            session.push_audio((0.2 * rng.standard_normal(n)).astype(np.float32), rate, 1)
        elif op == "wait":
            await clock.advance(float(rng.uniform(0.0, 0.3)))
            await asyncio.sleep(0.002)
        elif op == "mark":
            session.mark(f"m{len(got)}")
        elif op == "end":
            session.end_segment()
        elif op == "int":
            await session.interrupt()
    session.finish()
    if rng.random() < 0.5:  # barge-in while the last frames are still coming
        await asyncio.sleep(0.003)
        if not consumer.done():
            await session.interrupt()
    await asyncio.wait_for(consumer, 60)
    await session.aclose()
    return got


@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("seed", range(10))
async def test_random_live_sessions_keep_the_output_invariants(seed, window):
    got = await _random_live_session(seed, window)
    expected_next, pending_audio, last = 0, None, None
    for item in got:
        if isinstance(item, Interrupted):
            assert pending_audio is None  # a frame's audio is never separated from it
            assert item.played_frames <= expected_next
            expected_next, last = item.played_frames, None
        elif isinstance(item, VideoFrame):
            assert pending_audio is None and item.index == expected_next
            shown = image_index(item.image)  # its own pose, or a hold of the last image
            assert shown == item.index or (last is not None and shown == image_index(last.image))
            pending_audio, last, expected_next = item, item, expected_next + 1
        elif isinstance(item, AudioFrame):
            assert pending_audio is not None and item.index == pending_audio.index
            assert item.pts == pending_audio.pts and item.samples.shape == (24000 // 25,)
            pending_audio = None
    assert pending_audio is None
    # finish ends the segment, then the iteration; an interrupt after finish drops the rest
    assert isinstance(got[-1], SegmentEnd | Interrupted)
