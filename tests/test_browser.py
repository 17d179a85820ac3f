"""The browser page end to end: headless Chromium with a fake microphone playing speech and
silence, WebRTC to an in-process server, the page's own measurements POSTed back (?test=1).

Checks that video arrives, that the mouth moves much more in speech than in silence, and that
the received audio envelope and the mouth opening line up. The received audio is taken where
the user hears it: the level of the packet Chromium plays out while each frame is on screen
(``getSynchronizationSources``, see ``audio_while_shown``), not a Web Audio analyser, which
hears the track 38–56 ms later (7 runs) through its own buffering and window (kept as
``analyser_lag_ms``). The same lag is computed on the server's frames before encoding (in sync
by construction), so a lag of the model itself is not blamed on the transport.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest

from engine.scheduler import HALF_FRAME_RATE_LEVEL, StreamScheduler
from server.app import CTX, make_app, mouth_box
from server.settings import ServerSettings
from tests.devtools import CHROMIUM, browser_process, report_route, serve
from tests.lip_sync import LipSync, SourceTap, lip_sync, speech_and_silence

SECONDS = 24
# 256² keeps the warp renderer real time on a loaded 2-core machine (512² renders ~50 ms/frame
# there): this test is about the transport and the page, not render throughput.
FRAME_SIZE = 256

pytestmark = [
    pytest.mark.slow,
    pytest.mark.realtime,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (setup.sh --dev)"),
]


def chromium_command(url: str, wav: Path, profile: Path) -> list[str]:
    return [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--allow-loopback-in-peer-connection",
        "--autoplay-policy=no-user-gesture-required",
        url,
    ]


async def run_browser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: int = SECONDS
) -> tuple[dict, SourceTap]:
    app = make_app(ServerSettings(port=0, workers=2, frame_size=FRAME_SIZE))  # default driver
    got = report_route(app)
    wav = tmp_path / "speech_silence.wav"
    speech_and_silence(wav)
    async with serve(app) as base:  # the app's start-up prepares the bundled avatar
        avatar = app[CTX].avatars.get("default")
        tap = SourceTap(mouth_box(avatar.reference_pose, avatar.frame_size))
        tap.install(monkeypatch)
        url = f"{base}/?test=1&report=/report&seconds={seconds}"
        command = chromium_command(url, wav, tmp_path / "profile")
        async with browser_process(command, log=tmp_path / "chromium.log"):
            result = await asyncio.wait_for(got, seconds + 90)
            # The page closed its peer connection: the server must let go of everything.
            ctx = app[CTX]
            for _ in range(100):
                if ctx.admission.active == 0 and not ctx.engine.sessions:
                    break
                await asyncio.sleep(0.1)
            result["server_after"] = {
                "admission": ctx.admission.active,
                "sessions": len(ctx.engine.sessions),
            }
            return result, tap


def _session(run: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, LipSync]:
    run.mkdir()
    monkeypatch.undo()  # a fresh source tap for each session
    report, tap = asyncio.run(run_browser(run, monkeypatch))
    assert "error" not in report, report
    return report, lip_sync(report, tap, run / "report.json")


def test_browser_lip_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report, sync = _session(tmp_path / "first", monkeypatch)
    if sync.audio_corr <= 0.6 or sync.video_corr <= 0.9:
        # What Chromium played did not match what the server sent (audio match r 0.33 once, on
        # a slow host under the suite's load): a hiccup of the loaded machine, not a figure of
        # lip sync. One more session decides; a second hiccup fails below.
        print("transport hiccup, one more session:", json.dumps(sync.figures))
        report, sync = _session(tmp_path / "second", monkeypatch)
    figures = sync.figures
    assert report["frames_decoded"] >= 10 * SECONDS, figures  # ≥ 10 fps decoded
    assert report["video_size"] == [FRAME_SIZE, FRAME_SIZE]
    assert report["server_after"] == {"admission": 0, "sessions": 0}
    print("browser figures:", json.dumps(figures))
    assert sync.speech_frames > 50 and sync.silence_frames > 25, figures
    assert sync.speech_motion > 3 * sync.silence_motion, figures
    assert sync.video_corr > 0.9 and sync.audio_corr > 0.6, figures
    assert sync.levels_seen > 0.9, figures  # the played packets' levels were polled
    # The picture and the sound play together: the transport offset (which source frame is on
    # screen against which source audio is heard then, the model excluded) was -14..+18 ms over
    # 16 runs (two with a CPU hog): Chromium's own A/V sync leaves up to 30 ms uncorrected. The
    # lag of the mouth behind the played envelope adds the default model's small lip lead
    # (source_lag_ms, -10..-14 ms: its corpus moves the lips 20 ms before the sound): -21..+6 ms
    # over the last 9 runs.
    assert abs(40 * sync.av_lag) <= 40, figures
    assert abs(40 * sync.lag) <= 40, figures


def test_browser_plays_the_half_frame_rate_in_real_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held at the half-frame-rate level, the server does not send the repeated images: Chromium
    receives a 12.5 fps stream whose timestamps skip them, and plays it in real time with every
    audio packet."""
    seconds = 10

    def half_frame_rate(self: StreamScheduler, *args: object) -> None:
        self.level = HALF_FRAME_RATE_LEVEL

    monkeypatch.setattr(StreamScheduler, "_adapt", half_frame_rate)
    report, _ = asyncio.run(run_browser(tmp_path, monkeypatch, seconds))
    assert "error" not in report, report
    frames = [f for f in report["frames"] if f["rtp"] is not None]
    steps = np.diff([f["rtp"] for f in frames])
    print(
        "half frame rate:",
        report["frames_decoded"],
        "decoded,",
        np.unique(steps, return_counts=True),
    )
    assert 0.3 * 25 * seconds < report["frames_decoded"] < 0.6 * 25 * seconds
    assert np.median(steps) == 2 * 3600  # every other frame's timestamp (90 kHz)
    # Played at its own pace, not slowed down: media time keeps up with the clock.
    media = frames[-1]["media_time"] - frames[0]["media_time"]
    wall = (frames[-1]["now"] - frames[0]["now"]) / 1000
    assert 0.9 < media / wall < 1.1, (media, wall)
    assert report["audio_samples_received"] > 0.8 * 48000 * seconds
    # The page shows the images per second the eye sees, not the frames counted as sent.
    shown_fps = float(re.search(r"([\d.]+) fps", report["status"]).group(1))
    assert 9 < shown_fps < 16, report["status"]
    assert report["server_after"] == {"admission": 0, "sessions": 0}
