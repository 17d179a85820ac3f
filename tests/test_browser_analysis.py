"""The browser test's measurement helpers on synthetic series (no browser needed)."""

from __future__ import annotations

import numpy as np

from tests.browser_analysis import audio_while_shown, envelope_lag, playout_levels


def test_playout_levels_picks_the_packet_playing_across_the_rtp_wrap():
    start = 2**32 - 2 * 960  # the third packet wraps around
    levels = [((start + 960 * k) % 2**32, 0.1 * k) for k in range(6) if k != 4]  # 4 unseen
    at = [start + 10, start + 960 + 959, (start + 960 * 3 + 5) % 2**32, start + 960 * 4 + 1,
          start - 1, None]  # fmt: skip
    got = playout_levels(at, levels)
    np.testing.assert_allclose(got[:3], [0.0, 0.1, 0.3])
    assert np.isnan(got[3:]).all()  # an unseen packet, before the first one, no timestamp


def test_audio_while_shown_is_the_middle_of_each_frame_on_screen():
    frames = [
        {"audio_rtp": 1000, "shown": 0.0},
        {"audio_rtp": None, "shown": 50.0},
        {"audio_rtp": 5000, "shown": 83.0},
    ]
    # 25 ms and 16.5 ms at 48 kHz; the last frame gets half a nominal 40 ms frame.
    assert audio_while_shown(frames) == [1000 + 1200, None, 5000 + 960]


def test_envelope_lag_finds_a_sub_frame_delay():
    rng = np.random.default_rng(0)
    t = np.arange(600)
    audio = np.convolve(rng.random(700), np.ones(5) / 5, "same")  # a smooth envelope
    mouth = np.interp(t - 1.5, np.arange(-50, 650), audio)  # 1.5 frames late
    lag, corr = envelope_lag(audio[50:650], mouth)
    assert abs(lag - 1.5) < 0.25 and corr > 0.8
