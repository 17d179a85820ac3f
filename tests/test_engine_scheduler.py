"""The sliding-window scheduler, driven synchronously with fake renderers."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from engine.frames import (
    AudioFrame,
    Interrupted,
    Mark,
    SegmentEnd,
    StateEvent,
    VadEvent,
    VideoFrame,
)
from engine.scheduler import BufferFull, StreamSettings
from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.drivers import ProceduralDriver
from mmgt.errors import AudioError
from tests.engine_fakes import SIZE, image_index, make_scheduler


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 16000 * 4]


def run(sched, audio: np.ndarray, chunk: int = 320, rate: int = 16000, marks=()) -> list:  # noqa: ANN001
    """Push ``audio`` in chunks (``marks``: (input sample, name) pairs marked there), end the
    segment and drain; returns everything that came out."""
    out = []
    cuts = sorted({*range(0, len(audio), chunk), *(at for at, _ in marks if at < len(audio))})
    for a, b in itertools.pairwise([*cuts, len(audio)]):
        for name in (name for at, name in marks if at == a):
            sched.mark(name)
        sched.push_audio(audio[a:b], rate, 1, float(a))
        while got := sched.step(None):
            out.extend(got)
    for name in (name for at, name in marks if at >= len(audio)):
        sched.mark(name)
    sched.end_segment()
    while got := sched.step(None):
        out.extend(got)
    out.extend(sched.drain())
    return out


def window(sched, **step) -> list:  # noqa: ANN001
    """One stage-1 window: the step that runs it, then the steps that draw its frames."""
    out = sched.step(**step)
    while sched.undrawn_frames:
        out += sched.step(**step)
    return out


def split(items: list) -> tuple[list[VideoFrame], list[AudioFrame], list]:
    video = [f for f in items if isinstance(f, VideoFrame)]
    audio = [f for f in items if isinstance(f, AudioFrame)]
    events = [f for f in items if not isinstance(f, VideoFrame | AudioFrame)]
    return video, audio, events


@pytest.mark.parametrize("window", [False, True])
def test_every_frame_once_in_order_with_its_own_audio(speech, window):
    sched, _ = make_scheduler(window=window)
    video, audio, events = split(run(sched, speech, chunk=517))
    n = -(-len(speech) // 640)
    assert [v.index for v in video] == list(range(n))
    assert [image_index(v.image) for v in video] == list(range(n))  # renderer order kept
    assert [a.index for a in audio] == list(range(n))
    # 16 kHz in and out: frame i carries exactly input samples [640 i, 640 (i + 1)).
    joined = np.concatenate([a.samples for a in audio])
    np.testing.assert_allclose(joined[: len(speech)], speech, atol=1e-7)
    assert all(a.start_sample == a.index * 640 for a in audio)
    assert all(v.pts == a.pts for v, a in zip(video, audio, strict=True))
    assert [e for e in events if isinstance(e, SegmentEnd)] == [SegmentEnd(n - 1, 1)]


def test_items_alternate_video_then_its_audio(speech):
    sched, _ = make_scheduler()
    items = [f for f in run(sched, speech) if isinstance(f, VideoFrame | AudioFrame)]
    for v, a in zip(items[::2], items[1::2], strict=True):
        assert isinstance(v, VideoFrame) and isinstance(a, AudioFrame) and v.index == a.index


def test_windowed_poses_equal_whole_clip_generation(speech):
    """Hop windows with committed context give the procedural driver's whole-clip output."""
    sched, rec = make_scheduler(hop_frames=3)
    run(sched, speech, chunk=999)
    streamed = np.concatenate([p.points for p in rec.poses])
    whole = ProceduralDriver().generate(
        extract_light_features(speech), sched.reference_pose, frame_size=SIZE
    )
    np.testing.assert_allclose(streamed, whole.points[: len(streamed)], atol=1e-4)
    assert len(streamed) == len(whole.points)


def test_lookahead_and_hop_bound_the_window():
    sched, rec = make_scheduler(hop_frames=4, lookahead_frames=2)
    sched.push_audio(np.zeros(640 * 5 + 200, np.float32), 16000, 1, 0.0)
    assert sched.step(None) == []  # 5 final frames < hop + look-ahead
    sched.push_audio(np.zeros(640, np.float32), 16000, 1, 0.0)
    indices = lambda out: [v.index for v in out if isinstance(v, VideoFrame)]  # noqa: E731
    # A frame-wise renderer: the window's first frame leaves as soon as it is drawn, and each
    # later step draws one more of the window's frames, with no further stage-1 call.
    assert indices(sched.step(None)) == [0] and sched.undrawn_frames == 3
    assert [indices(sched.step(None)) for _ in range(4)] == [[1], [2], [3], []]
    assert sched.counters["driver_calls"] == 1 and sched.undrawn_frames == 0


def test_a_window_renderer_gets_the_whole_hop_at_once():
    sched, _ = make_scheduler(window=True, hop_frames=4, lookahead_frames=0)
    sched.push_audio(np.zeros(640 * 13, np.float32), 16000, 1, 0.0)
    sched.step(None)
    assert sched.undrawn_frames == 0  # the window stream holds them itself


@pytest.mark.parametrize("rate,channels,out_rate", [(44100, 2, 48000), (8000, 1, 24000)])
def test_any_input_rate_and_channels(speech, rate, channels, out_rate):
    import soxr

    x = soxr.resample(speech, 16000, rate)
    if channels == 2:
        x = np.stack([x, x], 1)
    sched, _ = make_scheduler(input_rate=rate, output_rate=out_rate)
    out = []
    for i in range(0, len(x), 1000):
        sched.push_audio(x[i : i + 1000], rate, channels, None)
        while got := sched.step(None):
            out.extend(got)
    video, audio, _ = split(out)
    assert len(video) >= int(len(speech) / 640) - 6
    assert all(a.samples.size == out_rate // 25 for a in audio)
    # The audio that comes back is the speech (correlates with it at zero lag).
    back = soxr.resample(np.concatenate([a.samples for a in audio]), out_rate, 16000)
    m = min(len(back), len(speech)) - 2000
    r = np.corrcoef(back[1000:m], speech[1000:m])[0, 1]
    assert r > 0.95


def test_interrupt_drops_the_rest_and_resumes_where_playback_stopped(speech):
    sched, rec = make_scheduler()
    sched.push_audio(speech, 16000, 1, 0.0)
    out = []
    while got := sched.step(None):
        out.extend(got)
    video, _, _ = split(out)
    assert len(video) > 60
    result = sched.interrupt(played_frames=30)
    assert isinstance(result, Interrupted)
    assert result.played_frames == 30 and result.played_s == pytest.approx(1.2)
    assert result.dropped_frames == len(video) - 30
    assert result.dropped_audio_s == pytest.approx(len(speech) / 16000 - 1.2, abs=0.01)
    assert len(rec.streams) == 2 and rec.streams[0].closed  # a fresh render stream
    after = run(sched, np.full(6400, 0.01, np.float32))
    video2, audio2, _ = split(after)
    assert [v.index for v in video2] == list(range(30, 40))
    np.testing.assert_allclose(audio2[0].samples[:100], 0.01, atol=1e-6)


def test_segment_end_pads_to_a_whole_frame():
    sched, _ = make_scheduler()
    video, audio, events = split(run(sched, np.full(1000, 0.1, np.float32)))
    assert [v.index for v in video] == [0, 1]
    assert events == [SegmentEnd(1, 1)]
    assert audio[1].samples[1000 - 640 :].max() == 0.0  # padded with silence


def test_a_repeated_segment_end_adds_no_silent_frame():
    sched, _ = make_scheduler()
    sched.push_audio(np.full(1000, 0.1, np.float32), 16000, 1, None)
    sched.end_segment()
    sched.end_segment()  # e.g. a client that sends "end" twice
    out = []
    while sched.has_work:
        out.extend(sched.step(None))
    video, _, events = split(out + sched.drain())
    assert [v.index for v in video] == [0, 1]
    assert events == [SegmentEnd(1, 1), SegmentEnd(1, 2)]


@pytest.mark.parametrize("rate,out_rate", [(16000, 16000), (44100, 48000), (48000, 24000)])
def test_a_finished_segment_renders_every_frame_at_any_rate(rate, out_rate):
    # 4 s of input is exactly 100 frames; the resamplers' held-back tail must not cost the
    # last one (it did for resampled input: the end padding went into a fresh resampler).
    sched, _ = make_scheduler(input_rate=rate, output_rate=out_rate)
    video, audio, events = split(run(sched, np.full(rate * 4, 0.1, np.float32), 1000, rate))
    assert [v.index for v in video] == list(range(100)) and len(audio) == 100
    assert events == [SegmentEnd(99, 1)]
    assert np.abs(audio[99].samples[: out_rate // 50] - 0.1).max() < 0.01  # its own audio


def test_marks_come_out_before_the_frame_they_play_in(speech):
    sched, _ = make_scheduler(input_rate=48000, output_rate=48000)
    x = np.repeat(speech, 3)  # 48 kHz
    cuts = [0, 5000, 48000, 100001, x.size]
    out = run(sched, x, 4000, 48000, marks=[(at, f"m{k}") for k, at in enumerate(cuts)])
    marks = [(i, m) for i, m in enumerate(out) if isinstance(m, Mark)]
    assert [m.name for _, m in marks] == ["m0", "m1", "m2", "m3", "m4"]
    frames = [f.index for f in out if isinstance(f, VideoFrame)]
    for (at, mark), cut in zip(marks, cuts, strict=True):
        assert mark.t == pytest.approx(cut / 48000, abs=1e-4) and mark.index == cut * 25 // 48000
        after = [f.index for f in out[at:] if isinstance(f, VideoFrame)]
        assert (after[0] if after else len(frames)) == mark.index


def test_idle_fill_advances_the_timeline_with_silence():
    sched, _ = make_scheduler()
    assert sched.fill_silence(640 * 10 + 192) == 640 * 10 + 192
    video, audio, _ = split(window(sched, now=None) + window(sched, now=None))
    assert [v.index for v in video] == list(range(8))
    assert all(v.source_time is None for v in video)  # idle frames carry no latency source
    assert max(np.abs(a.samples).max() for a in audio) == 0.0
    assert sched.fill_silence(100) == 0  # never goes backwards


def test_degrades_under_lag_without_drift(speech):
    @dataclasses.dataclass(frozen=True)
    class Settings:
        steps: int = 4

    class SlowDriver(ProceduralDriver):
        settings = Settings()

    driver = SlowDriver()
    sched, _ = make_scheduler(driver=driver, realtime=True, recover_after_s=1.0)
    sched.push_audio(speech, 16000, 1, 0.0)  # 4 s arrive at once: far behind "real time"
    out, levels = [], []
    for _ in range(5):
        out.extend(window(sched, now=0.0, starving=True))
        levels.append(sched.level)
    assert levels == [1, 2, 3, 4, 4]
    assert sched.driver.settings.steps == 1
    assert sched.counters["held_frames"] > 0
    states = [e for e in out if isinstance(e, StateEvent)]
    assert [s.level for s in states] == [1, 2, 3, 4]
    assert [s.detail for s in states][2:] == ["half frame rate", "hold"]
    # Caught up, then calm for long enough: quality comes back one level at a time.
    while got := sched.step(now=0.5, starving=True):
        out.extend(got)
    seen = []
    for k in range(12):  # real-time input: 4 frames every 160 ms
        sched.push_audio(np.zeros(640 * 4, np.float32), 16000, 1, 0.0)
        while got := sched.step(now=2.0 + 0.16 * k * 4, starving=True):
            out.extend(got)
        seen.append(sched.level)
    assert seen == sorted(seen, reverse=True)  # only steps back up
    assert sched.level == 0 and sched.driver.settings.steps == 4
    video, audio, _ = split(out)
    assert [v.index for v in video] == list(range(len(video)))
    assert [a.index for a in audio] == [v.index for v in video]


@pytest.mark.parametrize("window_stream", [False, True])
def test_half_frame_rate_draws_every_other_frame(speech, window_stream):
    """Level 3: a frame-wise stream draws the even frames and shows each image twice, with
    every frame's own audio; a window renderer cannot skip frames, so for it level 3 holds."""
    sched, rec = make_scheduler(window=window_stream, realtime=True, recover_after_s=1e9)
    sched.push_audio(speech, 16000, 1, 0.0)
    for _ in range(2):  # this driver has no sampling steps: no level 1
        window(sched, now=0.0, starving=True)
    assert sched.level == 3
    assert sched.hold_level == (3 if window_stream else 4)
    drawn_before = sum(len(p) for p in rec.poses) if not window_stream else None
    out = window(sched, now=None) + window(sched, now=None)
    video, audio, _ = split(out)
    assert (
        [a.index for a in audio]
        == [v.index for v in video]
        == list(range(video[0].index, video[0].index + len(video)))
    )
    assert all(a.samples.shape == audio[0].samples.shape for a in audio)
    shown = [image_index(v.image) for v in video]
    if window_stream:  # the frames it held come out, then its last image is held
        assert shown[-8:] == [shown[-9]] * 8, shown
        return
    assert len(video) == 16  # two hops of 8 (level 2 doubled the hop)
    assert shown == [i - i % 2 for i in range(video[0].index, video[0].index + 16)]
    drawn = [p.start_frame for p in rec.poses][-8:]
    assert sum(len(p) for p in rec.poses) - drawn_before == 8
    assert all(i % 2 == 0 for i in drawn)


@pytest.mark.parametrize(
    ("steps", "window_stream", "ladder"),
    [(4, False, (0, 1, 2, 3, 4)), (1, False, (0, 2, 3, 4)), (None, True, (0, 2, 3))],
)
def test_degradation_skips_levels_that_change_nothing(speech, steps, window_stream, ladder):
    """One stage-1 step is no relief for a one-step driver, and a window renderer cannot
    draw every other frame: under lag the scheduler goes straight past such levels, and back."""

    @dataclasses.dataclass(frozen=True)
    class Settings:
        steps: int | None = None

    class Driver(ProceduralDriver):
        settings = Settings(steps)

    sched, _ = make_scheduler(
        driver=Driver(), window=window_stream, realtime=True, recover_after_s=0.5
    )
    assert sched.levels == ladder
    sched.push_audio(speech, 16000, 1, 0.0)
    out = []
    while sched.level < sched.hold_level:
        out.extend(window(sched, now=0.0, starving=True))
    while got := sched.step(now=0.1, starving=True):  # the backlog drains at the hold
        out.extend(got)
    for k in range(1, 40):  # then real-time input, calm: back up to full quality
        sched.push_audio(np.zeros(640 * 4, np.float32), 16000, 1, 0.0)
        out.extend(window(sched, now=0.1 + 0.16 * k, starving=True))
    levels = [e.level for e in out if isinstance(e, StateEvent)]
    assert levels == [*ladder[1:], *ladder[-2::-1]]
    assert sched.counters["degrade_up"] == sched.counters["degrade_down"] == len(ladder) - 1


def test_a_hold_ends_sooner_than_the_other_levels(speech):
    """The hold freezes the picture: it steps back up after ``hold_recover_s`` of calm, the
    other levels after ``recover_after_s``."""
    sched, _ = make_scheduler(realtime=True, recover_after_s=2.0, hold_recover_s=0.5)
    sched.push_audio(speech[: 16000 * 2], 16000, 1, 0.0)
    while sched.level < sched.hold_level:
        window(sched, now=0.0, starving=True)
    while sched.has_work:  # the backlog drains at the hold, the last lag at t = 0
        window(sched, now=0.0, starving=True)
    levels = []
    for k in range(1, 13):  # real-time input from then on, a window every 0.16 s
        sched.push_audio(np.zeros(640 * 4, np.float32), 16000, 1, 0.0)
        window(sched, now=0.16 * k, starving=True)
        levels.append(sched.level)
    # The hop is 8 frames at these levels, so a window runs on every other push: the first
    # at least 0.5 s after the last lag is at 0.8 s.
    assert levels[:4] == [4] * 4 and levels[4] == 3
    assert levels[-1] == 3  # 1.92 s: not yet 2 s at level 3


def test_audio_ahead_of_the_clock_is_not_lag(speech):
    """A TTS burst: 4 s arrive at once while the live clock is at 0.2 s. The frames are not
    late (their play times have not come), so quality stays; once the clock has passed them
    unrendered, they are."""
    sched, _ = make_scheduler(realtime=True)
    sched.push_audio(speech, 16000, 1, 0.0)
    sched.clock_samples = 3200
    for _ in range(4):
        window(sched, now=0.0, starving=True)
    assert sched.level == 0
    sched.clock_samples = 4 * 16000  # the clock has run past the queued audio
    window(sched, now=0.1, starving=True)
    assert sched.level == 2  # (this driver has no sampling steps to cut: no level 1)


def test_no_degradation_when_the_consumer_is_not_waiting(speech):
    sched, _ = make_scheduler(realtime=True)
    sched.push_audio(speech, 16000, 1, 0.0)
    for _ in range(5):
        sched.step(now=0.0, starving=False)
    assert sched.level == 0


def test_bad_audio_is_refused_and_the_stream_goes_on():
    sched, _ = make_scheduler(max_buffered_s=1.0)
    with pytest.raises(AudioError, match="NaN"):
        sched.push_audio(np.array([0.0, np.nan], np.float32), 16000, 1, None)
    with pytest.raises(AudioError):
        sched.push_audio(np.zeros((10, 3), np.float32), 16000, 2, None)
    with pytest.raises(BufferFull, match="buffer full"):
        sched.push_audio(np.zeros(32000, np.float32), 16000, 1, None)
    sched.push_audio(np.zeros(6400, np.float32), 16000, 1, None)
    assert len(split(window(sched, now=None))[0]) == 4


def test_vad_events_mark_speech_and_silence(speech):
    sched, _ = make_scheduler(vad=True)
    audio = np.concatenate([np.zeros(16000, np.float32), speech[: 16000 * 2], np.zeros(16000)])
    events = [e for e in run(sched, audio.astype(np.float32)) if isinstance(e, VadEvent)]
    assert events[0].speech and 25 <= events[0].index <= 45
    assert not events[-1].speech and events[-1].index >= 70


def test_settings_are_validated():
    with pytest.raises(ValueError, match="multiple"):
        StreamSettings(output_rate=44099)
    with pytest.raises(ValueError):
        StreamSettings(hop_frames=0)


def test_smga_driver_streams_in_live_windows(speech):
    """A (tiny, untrained) SMGA model behind the scheduler: windows fit the model's length,
    the context is committed, and streaming is reproducible."""
    import torch

    from engine.engine import Engine
    from mmgt.drivers.smga import SamplerSettings, SMGADriver
    from mmgt.models.smga import SMGA, preset

    torch.manual_seed(0)
    model = SMGA(preset("tiny"))  # 16-frame windows

    def streamed() -> np.ndarray:
        drv = SMGADriver(model, feature_kind="light-v1", settings=SamplerSettings(steps=2, seed=3))
        settings = StreamSettings(hop_frames=4, lookahead_frames=2, output_rate=16000, vad=False)
        Engine._fit_smga_context(drv, settings)
        assert drv.context_frames == 16 - 2 * 4 - 2
        sched, rec = make_scheduler(driver=drv, hop_frames=4, lookahead_frames=2)
        video, _, _ = split(run(sched, speech[: 16000 * 2], chunk=640))
        assert [v.index for v in video] == list(range(50))
        return np.concatenate([p.points for p in rec.poses])

    first, second = streamed(), streamed()
    assert first.shape == (50, 134, 3) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, second)


def test_hop_driver_reproduces_the_live_scheduler(speech):
    """mmgt.drivers.hop (used by `mmgt eval --live-hop`) windows exactly like the engine."""
    import torch

    from engine.engine import Engine
    from mmgt.drivers.hop import HopDriver
    from mmgt.drivers.smga import SamplerSettings, SMGADriver
    from mmgt.models.smga import SMGA, preset

    torch.manual_seed(1)
    drv = SMGADriver(SMGA(preset("tiny")), feature_kind="light-v1",
                     settings=SamplerSettings(steps=2, seed=5))  # fmt: skip
    Engine._fit_smga_context(drv, StreamSettings(hop_frames=3, lookahead_frames=2))
    audio = speech[: 16000 * 2]
    sched, rec = make_scheduler(driver=drv, hop_frames=3, lookahead_frames=2)
    run(sched, audio, chunk=700)
    live = np.concatenate([p.points for p in rec.poses])
    offline = HopDriver(drv, hop=3, lookahead=2).generate(
        extract_light_features(audio), sched.reference_pose, frame_size=SIZE
    )
    np.testing.assert_array_equal(live, offline.points)
