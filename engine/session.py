"""The public streaming API: one :class:`Session` per avatar stream.

Modelled on LiveKit's ``VideoGenerator``: push audio in, iterate typed frames out.

    session = engine.open_session(avatar, input_rate=48000, channels=1)
    session.push_audio(pcm)            # any rate / channel count, float or int16
    session.end_segment()              # e.g. the TTS finished an utterance
    session.mark("word-3")             # a Mark comes out with the frame where this point plays
    session.set_motion(MotionControls(head=0.5, gestures=0))  # calmer head, no hand motion
    played = await session.interrupt() # barge-in: drop queued audio and frames
    async for frame in session: ...    # VideoFrame, AudioFrame, VadEvent, SegmentEnd, Mark, …

All model and render work runs in the engine's worker pool, one step at a time per session; the
asyncio loop only moves frames. When no audio arrives, silence is appended as the clock moves
(``idle``), so the avatar keeps blinking and breathing. Pacing belongs to the transport; the
session says when each frame is due (:meth:`Session.play_time`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from engine.clock import Clock, MonotonicClock
from engine.frames import AudioFrame, Interrupted, Mark, OutputFrame, StateEvent, VideoFrame
from engine.scheduler import SPEECH_RATE, BufferFull, StreamScheduler
from mmgt.audio.decode import check_chunk
from mmgt.drivers.controls import MotionControls
from mmgt.errors import AudioError

log = logging.getLogger(__name__)

MAX_MARK_CHARS = 200
MAX_PENDING_MARKS = 1000  # marks waiting for their frames (bounds what a client can queue)


class MarkLimit(RuntimeError):
    """Too many marks are waiting for their frames; the mark was not added."""


@dataclass
class SessionStats:
    """Figures a transport or the metrics endpoint reads (all cumulative)."""

    frames_out: int = 0
    audio_in_s: float = 0.0
    dropped_frames: int = 0  # queued frames an interrupt dropped
    skipped_frames: int = 0  # late video frames a transport skipped to stay live
    refused_chunks: int = 0
    latencies: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=2000)
    )


class Session:
    """One live avatar stream (see the module docstring). Create with ``Engine.open_session``."""

    def __init__(
        self,
        scheduler: StreamScheduler,
        *,
        executor: Executor | None = None,
        clock: Clock | None = None,
        idle: bool = True,
        idle_slack_s: float = 0.1,
        tick_s: float = 0.02,
        queue_frames: int = 25,
        name: str = "session",
        on_close=None,  # noqa: ANN001 - callable(Session) -> None
        on_latency=None,  # noqa: ANN001 - callable(seconds) -> None
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.stats = SessionStats()
        self._executor = executor
        self._clock = clock or MonotonicClock()
        self._idle = idle
        self._slack = idle_slack_s
        self._tick = tick_s
        self._queue_frames = queue_frames
        self._on_close = on_close
        self._on_latency = on_latency
        self._inbox: collections.deque[tuple] = collections.deque()
        self._motion = scheduler.motion  # what set_motion last asked for (the loop's view)
        self._inbox_samples = 0.0  # seconds of audio waiting in the inbox
        self._out: collections.deque[OutputFrame] = collections.deque()
        self._out_video = 0
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._avail = asyncio.Event()
        self._lock = asyncio.Lock()
        self._generation = 0
        self._played = 0  # video frames handed to the consumer
        self._starved = False  # the consumer found the queue empty since the last step
        self._marks_pending = 0  # marks asked for and not yet handed to the consumer
        self._finishing = False
        self._interrupting = 0  # interrupts in flight
        self._input_ended = False  # set in the worker once "finish" has been applied
        self._done = False  # no more frames will be produced
        self._closed = False
        self._error: BaseException | None = None
        self._t0 = self._clock.now()
        self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name=f"{name}-pump")

    # -- input ------------------------------------------------------------------------------
    def push_audio(
        self,
        samples: np.ndarray | bytes,
        sample_rate: int | None = None,
        channels: int | None = None,
    ) -> None:
        """Queue PCM: a (n,) / (n, channels) float or int16 array, or PCM16 LE bytes.

        Raises :class:`~mmgt.errors.AudioError` for malformed chunks and
        :class:`~engine.scheduler.BufferFull` when too much audio is queued; the session goes on.
        """
        self._check_input()
        rate = self.scheduler.input_rate if sample_rate is None else sample_rate
        ch = self.scheduler.channels if channels is None else channels
        if isinstance(samples, bytes | bytearray | memoryview):
            raw = bytes(samples)
            if len(raw) % (2 * ch):
                raise AudioError(
                    f"PCM16 chunk of {len(raw)} bytes is not a whole number of {ch}-channel samples"
                )
            samples = np.frombuffer(raw, "<i2").reshape(-1, ch)
        arr = check_chunk(samples, rate, ch)
        if arr.size == 0:
            return
        seconds = arr.shape[0] / rate
        limit = self.scheduler.settings.max_buffered_s
        if self.scheduler.buffered_s + self._inbox_samples + seconds > limit:
            self.stats.refused_chunks += 1
            raise BufferFull(
                f"audio buffer full ({limit:.0f} s queued ahead of playback); chunk dropped"
            )
        self._inbox.append(("audio", arr, rate, ch, self._clock.now()))
        self._inbox_samples += seconds
        self.stats.audio_in_s += seconds
        self._wake.set()

    def end_segment(self) -> None:
        """Mark the end of an utterance; a :class:`SegmentEnd` follows its last frame."""
        self._check_input()
        self._inbox.append(("end",))
        self._wake.set()

    def mark(self, name: str) -> None:
        """Mark the end of the audio pushed so far: a :class:`~engine.frames.Mark` with ``name``
        comes out just before the frame in which that point plays (captions, word timings).

        Raises ``ValueError`` for a name that is not 1–200 characters and :class:`MarkLimit`
        when :data:`MAX_PENDING_MARKS` marks are waiting for their frames."""
        self._check_input()
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_MARK_CHARS:
            raise ValueError(f"a mark's name is a string of 1–{MAX_MARK_CHARS} characters")
        if self._marks_pending >= MAX_PENDING_MARKS:
            raise MarkLimit(f"{MAX_PENDING_MARKS} marks are waiting for their frames")
        self._marks_pending += 1
        self._inbox.append(("mark", name))
        self._wake.set()

    def set_motion(self, controls: MotionControls) -> None:
        """Scale the head, gesture, mouth and blink motion of frames not yet posed
        (:mod:`mmgt.drivers.controls`); stays in force until the next call, interrupts
        included."""
        self._check_open()
        if not isinstance(controls, MotionControls):
            raise TypeError(f"expected MotionControls, got {type(controls).__name__}")
        self._motion = controls
        if self._inbox and self._inbox[-1][0] == "motion":  # a dial being dragged: coalesce
            self._inbox[-1] = ("motion", controls)
        else:
            self._inbox.append(("motion", controls))
        self._wake.set()

    @property
    def motion(self) -> MotionControls:
        """The motion controls last asked for (they apply from the next posed frame)."""
        return self._motion

    def finish(self) -> None:
        """End of input: render what is queued, then the iteration stops."""
        self._check_input()
        self._finishing = True
        self._inbox.append(("finish",))
        self._wake.set()

    async def interrupt(self) -> Interrupted:
        """Drop queued audio and frames now; returns (and emits) what was actually played."""
        self._check_open()
        self._interrupting += 1  # the iteration waits for this result, even if all is out
        try:
            return await self._interrupt()
        finally:
            self._interrupting -= 1
            self._avail.set()

    async def _interrupt(self) -> Interrupted:
        async with self._lock:  # wait for the step in flight
            self._generation += 1
            # Input queued before the interrupt goes; "finish" and motion settings stay.
            self._inbox = collections.deque(c for c in self._inbox if c[0] in ("finish", "motion"))
            unread_s, self._inbox_samples = self._inbox_samples, 0.0  # seconds not yet taken in
            self._marks_pending = 0  # queued, rendered or not: all dropped with their audio
            dropped = self._out_video
            # The audio of the frame the consumer already took stays (its video was played).
            head = self._out[0] if self._out else None
            played_audio = isinstance(head, AudioFrame) and head.index == self._played - 1
            self._out.clear()
            if played_audio:
                self._out.append(head)
            self._out_video = 0
            self._space.set()
            result = await self._run(self.scheduler.interrupt, self._played)
        if unread_s:  # audio dropped before the worker took it in counts as dropped too
            dropped_s = result.dropped_audio_s + unread_s
            result = dataclasses.replace(result, dropped_audio_s=dropped_s)
        self.stats.dropped_frames += dropped
        self._emit(result)
        return result

    def _check_input(self) -> None:
        self._check_open()
        if self._finishing:
            raise RuntimeError(f"{self.name}: input already finished")

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        if self._error is not None:
            raise RuntimeError(f"{self.name} failed: {self._error}") from self._error

    # -- output -----------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[OutputFrame]:
        return self

    async def __anext__(self) -> OutputFrame:
        while not self._out:
            self._starved = True  # the consumer waits for frames: the engine is behind
            if self._error is not None:
                raise self._error
            if self._closed or (self._done and not self._interrupting):
                raise StopAsyncIteration
            self._avail.clear()
            await self._avail.wait()
        item = self._out.popleft()
        if isinstance(item, Mark):
            self._marks_pending -= 1
        elif isinstance(item, VideoFrame):
            self._out_video -= 1
            self._played = item.index + 1
            self.stats.frames_out += 1
            self._space.set()
        return item

    @property
    def played_frames(self) -> int:
        return self._played

    @property
    def clock(self) -> Clock:
        return self._clock

    def play_time(self, index: int) -> float:
        """When frame ``index`` is due, on :attr:`clock`: the moment its audio has all arrived
        if the input keeps pace with the clock, which is where the idle fill keeps a live
        timeline (audio pushed ahead of the clock, e.g. a TTS burst, makes frames due later).

        A fixed schedule, so a frame that comes late is late alone: the frames after it are
        not held back to its lateness (re-anchoring on late frames made every overload episode
        add to the delay for the rest of the session)."""
        return self._t0 + self._slack + (index + 1) / self.scheduler.settings.fps

    async def wait_until_due(self, index: int, lead_s: float) -> None:
        """Wait until frame ``index`` is at most ``lead_s`` ahead of :meth:`play_time`."""
        wait = self.play_time(index) - lead_s - self._clock.now()
        if wait > 0:
            await self._clock.sleep(wait)

    def record_latency(self, frame: VideoFrame, handed_over: float | None = None) -> None:
        """Transports call this when a frame leaves (e.g. after encoding) for latency figures."""
        if frame.source_time is not None:
            now = self._clock.now() if handed_over is None else handed_over
            self.stats.latencies.append(now - frame.source_time)
            if self._on_latency is not None:
                self._on_latency(now - frame.source_time)

    # -- the pump -------------------------------------------------------------------------------
    async def _pump(self) -> None:
        try:
            while not self._done:
                async with self._lock:
                    generation = self._generation
                    commands = list(self._inbox)
                    self._inbox.clear()
                    self._inbox_samples = 0.0
                    starving, self._starved = self._starved, False
                    frames, last, busy = await self._run(
                        self._work, commands, self._clock.now(), starving
                    )
                for item in frames:
                    if generation != self._generation:
                        break  # interrupted meanwhile: these frames are past the played point
                    # Room is waited for before a video frame only: its audio follows it at
                    # once, so an interrupt cannot come between them.
                    while (
                        isinstance(item, VideoFrame)
                        and self._out_video >= self._queue_frames
                        and generation == self._generation
                    ):
                        self._space.clear()
                        await self._space.wait()
                    if generation == self._generation:
                        self._emit(item)
                if last:
                    self._done = True
                    self._avail.set()
                    break
                if not frames and not busy:
                    await self._wait_for_work()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced to the consumer, not swallowed
            log.exception("%s failed", self.name)
            self._error = exc
            self._avail.set()

    def _work(
        self, commands: list[tuple], now: float, starving: bool
    ) -> tuple[list[OutputFrame], bool, bool]:
        """One step in a worker thread: apply commands, fill silence, run one window.

        Returns the frames, whether the input has ended and everything is out, and whether
        the scheduler has more to do right away (a window renderer may hold a whole hop and
        return nothing, which is not the same as having nothing to do)."""
        sched = self.scheduler
        out: list[OutputFrame] = []
        due = int((now - self._t0 - self._slack) * SPEECH_RATE)
        if self._idle and not self._input_ended:
            sched.clock_samples = due  # audio arriving now is compared with this
        for cmd in commands:
            if cmd[0] == "audio":
                _, arr, rate, ch, arrival = cmd
                try:
                    sched.push_audio(arr, rate, ch, arrival)
                except AudioError as exc:  # BufferFull included
                    code = "buffer_full" if isinstance(exc, BufferFull) else "bad_audio"
                    out.append(StateEvent(sched.emitted, "error", str(exc), code=code))
            elif cmd[0] == "end":
                sched.end_segment()
            elif cmd[0] == "mark":
                sched.mark(cmd[1])
            elif cmd[0] == "motion":
                sched.motion = cmd[1]
            elif cmd[0] == "finish":
                sched.end_segment()
                self._input_ended = True
        if self._idle and not self._input_ended:
            sched.fill_idle(due)
        else:
            sched.clock_samples = None  # the input has ended or is not paced by a clock
        out.extend(sched.step(now, starving and not self._input_ended))
        busy = sched.has_work
        if self._input_ended and not out and not busy:
            return sched.drain(), True, False
        return out, False, busy

    async def _wait_for_work(self) -> None:
        if self._wake.is_set():
            self._wake.clear()
            return
        wake = asyncio.ensure_future(self._wake.wait())
        tick = asyncio.ensure_future(self._clock.sleep(self._tick))
        try:
            await asyncio.wait({wake, tick}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (wake, tick):
                f.cancel()
            # asyncio.wait neither raises the helpers' cancellation nor swallows this task's
            # own (awaiting them under suppress(CancelledError) did: a close that landed there
            # was lost and the pump ran on).
            await asyncio.wait({wake, tick})
        self._wake.clear()

    async def _run(self, fn, *args):  # noqa: ANN001, ANN202
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _emit(self, item: OutputFrame) -> None:
        self._out.append(item)
        if isinstance(item, VideoFrame):
            self._out_video += 1
        self._avail.set()

    # -- closing ----------------------------------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the pump, release the render stream; the iteration ends. Idempotent; the
        bookkeeping (``on_close``) happens even if the caller is cancelled meanwhile."""
        if self._closed:
            return
        self._closed = True
        try:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump_task
            async with self._lock:
                await self._run(self.scheduler.close)
        finally:
            self._out.clear()
            self._avail.set()
            self._space.set()
            if self._on_close is not None:
                self._on_close(self)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
