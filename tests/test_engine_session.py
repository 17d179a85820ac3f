"""The asyncio Session on a virtual clock: pacing-free output, idle, interruption, A/V pts."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.clock import VirtualClock
from engine.frames import AudioFrame, Interrupted, SegmentEnd, StateEvent, VideoFrame
from engine.metrics import EngineMetrics
from engine.scheduler import BufferFull
from engine.session import Session
from mmgt.audio import load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.errors import AudioError
from server.protocol import event_json
from tests.engine_fakes import make_scheduler


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))


def new_session(clock: VirtualClock | None = None, **kw) -> Session:  # noqa: ANN003
    sched, _ = make_scheduler(output_rate=24000, **kw)
    return Session(sched, clock=clock or VirtualClock(), name="test")


async def caught_up(session: Session, clock: VirtualClock, backlog_s: float = 0.4) -> None:
    """Let real (thread) time pass until the session has rendered what virtual time gave it and
    its pump is idle, waiting on the clock."""
    for _ in range(5000):
        idle = clock.waiting > 0 and not session._inbox
        if idle and session.scheduler.buffered_s <= backlog_s:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the session did not catch up")


async def collect(session: Session, out: list) -> None:
    async for item in session:
        out.append(item)


async def test_ten_minutes_on_a_virtual_clock_keep_av_locked(speech):
    """Speech with long pauses for 10 virtual minutes: every frame once, audio pts = video pts,
    and the idle fill keeps frames coming through the pauses."""
    clock = VirtualClock()
    session = new_session(clock)
    items: list = []
    consumer = asyncio.create_task(collect(session, items))
    chunk = 3200  # 200 ms
    rng = np.random.default_rng(0)
    t = 0.0
    while t < 600.0:
        if rng.random() < 0.75:  # 25 % of the time nobody speaks
            start = int(rng.integers(0, len(speech) - chunk))
            session.push_audio(speech[start : start + chunk], 16000, 1)
        await clock.advance(0.2)
        t += 0.2
        await caught_up(session, clock)
    session.finish()
    await asyncio.wait_for(consumer, 60)
    video = [f for f in items if isinstance(f, VideoFrame)]
    audio = [f for f in items if isinstance(f, AudioFrame)]
    assert [v.index for v in video] == list(range(len(video)))
    assert [a.index for a in audio] == [v.index for v in video]
    offsets = {round(v.pts - a.pts, 9) for v, a in zip(video, audio, strict=True)}
    assert offsets == {0.0}
    assert len(video) >= 600 * 25 - 25  # the pauses were filled: the timeline kept moving
    assert all(a.samples.size == 960 for a in audio)
    await session.aclose()


async def jittery_microphone(
    speech: np.ndarray, max_hold_s: float = 0.9, **settings
) -> tuple[list, Session]:
    """Two virtual minutes of speech in 100 ms chunks; every 5 s the network holds the audio
    for longer (0.2 s, 0.3 s, … up to ``max_hold_s``) and then delivers it at once. Returns
    the frames and the session."""
    clock = VirtualClock()
    session = new_session(clock, **settings)
    got: list = []

    async def consume() -> None:
        async for item in session:
            if isinstance(item, VideoFrame):
                got.append(item)

    consumer = asyncio.create_task(consume())
    chunk, held = 1600, []
    for k in range(1200):
        held.append(np.roll(speech, -k * chunk)[:chunk])
        hold = min(
            2 + k // 50, round(max_hold_s * 10)
        )  # chunks the network holds in this 5 s period
        if k % 50 < 50 - hold:
            for c in held:
                session.push_audio(c, 16000, 1)
            held.clear()
        await clock.advance(0.1)
        await caught_up(session, clock)
    session.finish()
    await asyncio.wait_for(consumer, 60)
    return got, session


def _delay_s(frames: list, since_s: float) -> float:
    """Median delay, from frame ``since_s`` on, between a frame's audio arriving and the frame's
    place on the timeline (which a transport pacing by pts shows it at)."""
    return float(np.median([f.pts - f.source_time for f in frames
                            if f.source_time is not None and f.pts >= since_s]))  # fmt: skip


async def test_late_audio_does_not_add_up_to_latency(speech):
    """A hold makes the session fill silence, then the held audio lands after it: without
    catching up, the delay rises to the longest hold so far and stays there (a jitter buffer
    that only grows; the soak benchmark saw +0.7 s after 30 minutes). Leaving out quiet audio
    brings it back after each hold."""
    frames, session = await jittery_microphone(speech, catch_up_s=1.0)
    assert _delay_s(frames, 100) < 0.1
    idle = session.scheduler.counters["idle_samples"]
    assert 0.5 * idle < session.scheduler.counters["late_samples_made_up"] <= idle
    await session.aclose()
    frames, session = await jittery_microphone(speech, catch_up_s=0)  # the behaviour without
    assert _delay_s(frames, 100) > 0.6
    await session.aclose()


async def test_a_noisy_microphone_catches_up_too(speech):
    """Room noise at -35 dBFS is louder than the fixed quiet level (-40 dBFS); what counts as
    quiet follows the input's background, so the noise between words is left out all the same
    (with the fixed level the delay stayed at the longest hold, as without catching up)."""
    rng = np.random.default_rng(2)
    noisy = (speech + rng.normal(0, 10 ** (-35 / 20), speech.size)).astype(np.float32)
    frames, session = await jittery_microphone(noisy, catch_up_s=1.0)
    assert _delay_s(frames, 100) < 0.1
    await session.aclose()


async def test_a_loud_room_catches_up_by_time_compression(speech):
    """Noise at -24 dBFS is louder than anything that may be left out as quiet (-30 dBFS), so
    only time compression (at most 10 % faster) makes up the holds (without it the median delay
    stayed at 0.32 s, the longest hold less the tolerance)."""
    rng = np.random.default_rng(4)
    loud = (speech + rng.normal(0, 10 ** (-24 / 20), speech.size)).astype(np.float32)
    frames, session = await jittery_microphone(loud, max_hold_s=0.4, catch_up_s=1.0)
    assert _delay_s(frames, 100) < 0.1
    counters = session.scheduler.counters
    assert counters["late_samples_compressed"] == counters["late_samples_made_up"] > 0
    # Operators see it in /metrics.
    text = EngineMetrics(lambda: [session]).render().decode()
    families = text_string_to_metric_families(text)
    samples = {(s.name, s.labels.get("method")): s.value for f in families for s in f.samples}
    made_up = "mmgt_session_late_audio_made_up_seconds_total"
    assert samples[made_up, "compressed"] == counters["late_samples_compressed"] / 16000
    assert samples[made_up, "quiet"] == 0.0
    assert samples["mmgt_session_idle_seconds_total", None] == counters["idle_samples"] / 16000
    await session.aclose()


async def paced_sends(speech: np.ndarray, burst_s: float, stall_at: int) -> list[float]:
    """Ten virtual seconds: ``burst_s`` of speech pushed at once at the start (a TTS burst),
    then speech in real time; the consumer paces frames like the websocket transport and
    stalls 0.8 s while sending frame ``stall_at``. Returns each frame's send time minus its
    play time."""
    clock = VirtualClock()
    sched, _ = make_scheduler(output_rate=24000)
    # Room for the whole burst, so the pump is never blocked and caught_up() can tell when the
    # session is idle (the transport's pacing is what holds frames back here).
    session = Session(sched, clock=clock, queue_frames=int(25 * burst_s) + 25)
    lateness: list[float] = []

    async def consume() -> None:
        async for item in session:
            if isinstance(item, VideoFrame):
                await session.wait_until_due(item.index, 0.3)
                if item.index == stall_at:
                    await clock.sleep(0.8)  # a slow client or a busy loop
                lateness.append(clock.now() - session.play_time(item.index))

    consumer = asyncio.create_task(consume())
    session.push_audio(speech[: int(16000 * burst_s)], 16000, 1)
    for k in range(100):
        session.push_audio(np.roll(speech, -k * 1600)[:1600], 16000, 1)
        await clock.advance(0.1)
        await caught_up(session, clock)
    consumer.cancel()  # it waits on the clock for frames due after these ten seconds
    await asyncio.gather(consumer, return_exceptions=True)
    await session.aclose()
    return lateness


async def test_pacing_holds_bursts_and_a_late_frame_is_late_alone(speech):
    """Frames never leave more than the lead ahead of their play time (a TTS burst is held),
    and a stall delays the frames queued behind it but not the rest of the session: the
    schedule is the clock's, not re-anchored on the late frame."""
    lateness = np.asarray(await paced_sends(speech, burst_s=3.0, stall_at=150))
    assert lateness.min() >= -0.3 - 1e-9
    assert np.allclose(lateness[10:150], -0.3)  # the burst keeps frames ahead: held to the lead
    assert lateness[150] > 0.4  # the stalled frame and those queued behind it leave late…
    assert np.allclose(lateness[175:], -0.3)  # …and then the schedule is the clock's again


async def test_idle_session_keeps_producing_silent_frames():
    clock = VirtualClock()
    session = new_session(clock)
    items: list = []
    consumer = asyncio.create_task(collect(session, items))
    for _ in range(100):
        await clock.advance(0.02)
        await caught_up(session, clock)
    await asyncio.sleep(0.1)
    video = [f for f in items if isinstance(f, VideoFrame)]
    assert 35 <= len(video) <= 50  # 2 s minus the idle slack and one hop
    assert all(f.source_time is None for f in video)
    await session.aclose()
    await consumer


async def test_interrupt_reports_what_was_played_and_resumes_there(speech):
    session = new_session()
    session.push_audio(speech[: 16000 * 3], 16000, 1)
    got = []
    async for item in session:
        got.append(item)
        if isinstance(item, VideoFrame) and item.index == 9:
            break
    result = await session.interrupt()
    assert isinstance(result, Interrupted)
    assert result.played_frames == 10 and result.played_s == pytest.approx(0.4)
    assert result.dropped_audio_s == pytest.approx(3 - 0.4, abs=0.05)
    session.push_audio(np.zeros(3200, np.float32), 16000, 1)
    session.finish()
    rest = [item async for item in session]
    # The audio of the last frame played stays with it; then the event goes out, before any
    # new frame, so transports can tell clients.
    assert isinstance(rest[0], AudioFrame) and rest[0].index == 9
    assert rest[1] == result
    indices = [f.index for f in rest if isinstance(f, VideoFrame)]
    assert indices[0] == 10 and indices == list(range(10, 10 + len(indices)))
    await session.aclose()


async def test_an_interrupt_counts_audio_not_yet_taken_in(speech):
    """Audio handed in and dropped before the worker took it counts as dropped audio too."""
    session = new_session()
    session.push_audio(speech[: 16000 * 3], 16000, 1)
    result = await session.interrupt()  # at once: the 3 s are still in the session's inbox
    assert result.played_frames == 0 and result.dropped_audio_s == pytest.approx(3.0)
    session.finish()
    assert not [f async for f in session if isinstance(f, VideoFrame)]
    await session.aclose()


async def test_finish_ends_the_iteration_after_the_last_frame(speech):
    session = new_session()
    session.push_audio(speech[:8000], 16000, 1)
    session.finish()
    items = [item async for item in session]
    video = [f for f in items if isinstance(f, VideoFrame)]
    assert len(video) == 13 and isinstance(items[-1], SegmentEnd)
    with pytest.raises(RuntimeError, match="finished"):
        session.push_audio(speech[:100], 16000, 1)
    await session.aclose()


async def test_finish_renders_every_frame_through_a_window_renderer(speech):
    # A window renderer holds a hop it was given and returns nothing: the session must keep
    # posing the frames after it instead of taking the empty step for the end (it did, and
    # the last 24 frames were lost).
    session = new_session(window=True, hop_frames=4)
    session.push_audio(speech[: 40 * 640], 16000, 1)
    session.finish()
    items = [item async for item in session]
    assert [f.index for f in items if isinstance(f, VideoFrame)] == list(range(40))
    assert [f.index for f in items if isinstance(f, AudioFrame)] == list(range(40))
    assert isinstance(items[-1], SegmentEnd)
    await session.aclose()


async def test_bad_chunks_are_refused_and_the_session_goes_on():
    session = new_session(max_buffered_s=1.0)
    with pytest.raises(AudioError, match="whole number"):
        session.push_audio(b"\x00\x01\x02", 16000, 1)
    with pytest.raises(BufferFull):
        session.push_audio(np.zeros(32000, np.int16), 16000, 1)
    # Malformed chunks are refused where they are handed in, not later inside the pump.
    bad = [
        ((np.zeros(160, np.float32), 0, 1), "0 Hz is outside"),
        ((np.zeros(160, np.float32), 16000.5, 1), "integer number of Hz"),
        ((np.zeros(160, np.float32), 16000, 0), "0 channels"),
        ((np.zeros((160, 3), np.float32), 16000, 2), r"shape \(n, 2\)"),
        ((np.zeros((10, 2, 2), np.float32), 16000, 1), "shape"),
        ((np.full(160, np.nan, np.float32), 16000, 1), "NaN"),
        ((np.zeros(160, np.int32), 16000, 1), "int32"),
        ((np.array(["a"] * 160), 16000, 1), "float32/float64 or int16"),
    ]
    for args, said in bad:
        with pytest.raises(AudioError, match=said):
            session.push_audio(*args)
    session.push_audio(np.zeros(3200, np.int16).tobytes(), 16000, 1)
    session.finish()
    video = [f async for f in session if isinstance(f, VideoFrame)]
    assert len(video) == 5
    await session.aclose()


async def test_a_chunk_the_scheduler_refuses_is_reported_with_its_code():
    """Chunks handed in together may pass the session's buffer check and overflow the
    scheduler's: the refusal comes out as an event that keeps the reason (the websocket's
    ``buffer_full``, not ``bad_audio``). One worker step, run here while the pump waits."""
    session = new_session(max_buffered_s=1.0)
    chunk = np.zeros(12000, np.float32)  # 0.75 s: the second one overflows
    commands = [("audio", chunk, 16000, 1, 0.0), ("audio", chunk, 16000, 1, 0.0)]
    out, _, _ = session._work(commands, now=0.0, starving=False)
    refused = [e for e in out if isinstance(e, StateEvent) and e.state == "error"]
    assert [e.code for e in refused] == ["buffer_full"]
    assert event_json(refused[0], 25)["code"] == "buffer_full"
    assert event_json(StateEvent(0, "error", "odd chunk"), 25)["code"] == "bad_audio"
    await session.aclose()


async def test_close_cancels_the_pump_and_ends_iteration():
    before = len(asyncio.all_tasks())
    session = new_session()
    session.push_audio(np.zeros(16000, np.float32), 16000, 1)
    await asyncio.sleep(0.05)
    await session.aclose()
    await session.aclose()  # idempotent
    assert [f async for f in session] == []
    assert len(asyncio.all_tasks()) == before
    with pytest.raises(RuntimeError, match="closed"):
        session.push_audio(np.zeros(10, np.float32), 16000, 1)


@pytest.mark.parametrize("steps", range(8))
async def test_close_wins_at_any_point_of_the_pump_waking_up(steps):
    """aclose() ends the pump whichever await it is at when the cancellation lands, including
    while the pump tidies up the helpers of its wait (a swallowed cancellation there once left
    the pump running and aclose() waiting forever)."""
    clock = VirtualClock()
    session = new_session(clock)
    await caught_up(session, clock)
    _, _, tick = clock._sleepers[0]  # wake the pump's tick by hand, then close `steps` later
    tick.set_result(None)
    for _ in range(steps):
        await asyncio.sleep(0)
    async with asyncio.timeout(5) as deadline:  # aclose() swallows its own cancellation
        await session.aclose()
    assert not deadline.expired(), "aclose() waited for a pump that ignored its cancellation"
    assert session._pump_task.done()
