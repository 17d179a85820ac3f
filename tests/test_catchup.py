"""Catching up after late audio (engine/catchup.py): what may be left out, and when."""

from __future__ import annotations

import numpy as np
import pytest

from engine.catchup import (
    QUIET_CEILING_DBFS,
    QUIET_DBFS,
    LateAudio,
    NoiseFloor,
    TimeCompressor,
    drop_quiet,
)


def test_only_quiet_blocks_are_left_out_earliest_first():
    rng = np.random.default_rng(0)
    loud = rng.normal(0, 0.2, 160).astype(np.float32)  # -14 dBFS
    hush = rng.normal(0, 0.002, 160).astype(np.float32)  # -54 dBFS
    chunk = np.concatenate([loud, hush, loud, hush, hush, loud, hush])  # 7 blocks of 10 ms
    kept, dropped = drop_quiet(chunk, 16000, limit=3 * 160 + 100)
    assert dropped == 3 * 160  # whole blocks only, within the limit
    np.testing.assert_array_equal(kept, np.concatenate([loud, loud, loud, hush]))
    assert drop_quiet(chunk, 16000, limit=159) == (chunk, 0)  # less than a block: nothing
    speech = np.tile(loud, 5)
    assert drop_quiet(speech, 16000, limit=10**6)[1] == 0  # speech is never cut


def test_int16_and_stereo_chunks_keep_their_layout():
    loud = (np.sin(np.arange(480) / 3) * 8000).astype(np.int16)
    stereo = np.stack([np.concatenate([loud, np.zeros(480, np.int16)])] * 2, axis=1)
    kept, dropped = drop_quiet(stereo, 48000, limit=480)
    assert dropped == 480 and kept.dtype == np.int16 and kept.shape == (480, 2)
    np.testing.assert_array_equal(kept[:, 0], loud)


def test_the_books_owe_only_short_fills_and_only_while_the_audio_runs_ahead():
    late = LateAudio(window_s=1.0)
    second = 16000
    # A 0.3 s fill, then the late audio arrives in a burst: the timeline runs 0.3 s ahead.
    late.idle(int(0.3 * second))
    ahead = late.allowance(timeline=10 * second, incoming=int(0.3 * second), clock=10 * second)
    assert ahead == int(0.2 * second)  # 0.1 s ahead is tolerated
    late.made_up(int(0.2 * second))
    assert late.owed == int(0.1 * second)
    late.settle(timeline=int(10.2 * second), clock=10 * second)  # still ahead: still owed
    assert late.owed == int(0.1 * second)
    late.settle(timeline=int(10.05 * second), clock=10 * second)  # back with the clock…
    late.settle(timeline=int(10.95 * second), clock=int(10.9 * second))
    assert late.owed == int(0.1 * second)  # …but a burst can land over several steps
    late.settle(timeline=int(11.05 * second), clock=11 * second)  # in line for 1 s: settled
    assert late.owed == 0
    # Audio resuming on time after a short pause: nothing to leave out, and after a second in
    # line with the clock nothing is owed.
    late.idle(int(0.5 * second))
    assert late.allowance(timeline=12 * second, incoming=320, clock=12 * second) == 0
    for t in (12.0, 12.5, 13.0):
        late.settle(timeline=int(t * second) + 320, clock=int(t * second))
    assert late.owed == 0
    # Late audio landing over two steps: the first leaves the timeline in line with the clock,
    # the second runs it ahead, and that is made up.
    late.idle(int(0.4 * second))
    assert late.allowance(timeline=14 * second, incoming=int(0.05 * second), clock=14 * second) == 0
    late.settle(timeline=int(14.05 * second), clock=14 * second)
    rest = late.allowance(int(14.05 * second), int(0.35 * second), clock=14 * second)
    assert rest == int(0.3 * second)
    # A small fill between the parts of a burst adds to the debt; it does not replace it.
    late = LateAudio(window_s=1.0)
    late.idle(int(0.4 * second))
    late.allowance(timeline=16 * second, incoming=320, clock=16 * second)
    late.idle(100)
    assert late.allowance(16 * second, 16000, clock=16 * second) == int(0.4 * second) + 100
    # A long silence was a pause, not late audio: nothing is owed.
    late.idle(3 * second)
    assert late.allowance(timeline=20 * second, incoming=5 * second, clock=20 * second) == 0
    # A TTS burst after a short fill: at most that fill is made up, never the burst itself.
    late.idle(int(0.25 * second))
    burst = late.allowance(timeline=30 * second, incoming=8 * second, clock=30 * second)
    assert burst == int(0.25 * second)
    # Offline (no clock): never.
    late.idle(1000)
    assert late.allowance(timeline=0, incoming=10**6, clock=None) == 0


def noise(rng: np.random.Generator, dbfs: float, seconds: float) -> np.ndarray:
    return rng.normal(0, 10 ** (dbfs / 20), int(16000 * seconds)).astype(np.float32)


def test_quiet_follows_the_microphones_background_level():
    rng = np.random.default_rng(1)
    floor = NoiseFloor()
    floor.push(noise(rng, -36, 0.5), 16000)
    assert floor.quiet_dbfs == QUIET_DBFS  # not enough heard yet: the fixed threshold
    floor.push(noise(rng, -36, 2.0), 16000)
    assert -31 <= floor.quiet_dbfs <= QUIET_CEILING_DBFS  # a noisy room: its noise is quiet
    speech_in_noise = noise(rng, -36, 0.5)
    speech_in_noise[:4000] += noise(rng, -18, 0.25)  # the first 250 ms are speech
    kept, dropped = drop_quiet(speech_in_noise, 16000, 10**6, floor.floor_dbfs + 6)
    assert dropped == 4000 and np.array_equal(kept, speech_in_noise[:4000])
    for dbfs, expected in ((-60, QUIET_DBFS), (-20, QUIET_CEILING_DBFS)):
        quiet_room_or_all_speech = NoiseFloor()
        quiet_room_or_all_speech.push(noise(rng, dbfs, 3.0), 16000)
        assert quiet_room_or_all_speech.quiet_dbfs == expected
    silent = NoiseFloor()  # digital silence (e.g. a TTS between utterances)
    silent.push(np.zeros(32000, np.int16), 16000)
    assert silent.quiet_dbfs == QUIET_DBFS


def compress_in_chunks(x: np.ndarray, rate: int, chunk: int, limit: int = 10**9):  # noqa: ANN201
    compressor, out, removed = TimeCompressor(0.1), [], 0
    for i in range(0, x.shape[0], chunk):
        y, cut = compressor(x[i : i + chunk], rate, limit - removed)
        assert y.shape[0] == min(chunk, x.shape[0] - i) - cut
        out.append(y)
        removed += cut
    return np.concatenate(out), removed


def block_dbfs(x: np.ndarray, rate: int) -> np.ndarray:
    block = rate // 100
    x = x[: x.shape[0] // block * block]
    return 10 * np.log10(np.mean(x.reshape(-1, block) ** 2, axis=1))


@pytest.mark.parametrize(("rate", "chunk_s"), [(48000, 0.02), (16000, 0.1), (16000, 3.0)])
def test_time_compression_keeps_pitch_level_and_continuity(rate, chunk_s):
    """A jitter buffer's accelerate: about 10 % shorter, a tone keeps its pitch and stays
    smooth across every cut (cut at a period), noise keeps its level through the cross-fades."""
    t = np.arange(3 * rate) / rate
    tone = (0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t + 1)).astype(
        np.float32
    )
    hiss = np.random.default_rng(3).normal(0, 0.05, t.size).astype(np.float32)
    for x in (tone, hiss):
        y, removed = compress_in_chunks(x, rate, int(chunk_s * rate))
        assert 0.085 < removed / x.size < 0.105
        # No seams: the largest step between samples is the signal's own.
        assert np.abs(np.diff(y)).max() <= 1.02 * np.abs(np.diff(x)).max()
        # The level holds through every 10 ms block (a plain cross-fade of noise dips 3 dB).
        assert block_dbfs(y, rate).min() > block_dbfs(x, rate).min() - 1.0
    y, _ = compress_in_chunks(tone, rate, int(chunk_s * rate))
    peak_hz = np.fft.rfftfreq(y.size, 1 / rate)[np.argmax(np.abs(np.fft.rfft(y)))]
    assert abs(peak_hz - 180) < 0.5  # pitch kept (resampling 10 % faster would give 198 Hz)


def test_time_compression_limit_layout_and_off():
    rate = 48000
    t = np.arange(rate) / rate
    voice = (np.sin(2 * np.pi * 150 * t) * 8000).astype(np.int16)
    stereo = np.stack([voice, voice // 2], axis=1)  # (n, 2) int16
    y, removed = TimeCompressor(0.1)(stereo, rate, limit=1000)
    assert 120 <= removed <= 1000 and y.shape == (rate - removed, 2) and y.dtype == np.int16
    np.testing.assert_allclose(y[:, 1], y[:, 0] / 2, atol=1)  # both channels cut alike
    assert TimeCompressor(0.1)(stereo, rate, limit=100)[1] == 0  # less than the shortest cut
    assert TimeCompressor(0.0)(stereo, rate, limit=10**6)[1] == 0  # off
    with pytest.raises(ValueError, match="speedup"):
        TimeCompressor(0.6)
