"""What the browser lip-sync tests share: the speech-and-silence input, a tap on the frames the
server hands to WebRTC, and the figures from the page's report (tests/browser_analysis.py does
the maths)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from server import webrtc
from tests.browser_analysis import (
    audio_while_shown,
    av_offset,
    envelope_lag,
    on_grid,
    playout_levels,
    speech_silence_motion,
)

SPEECH = Path(__file__).resolve().parents[1] / "mmgt" / "assets" / "speech_sample.wav"
RATE = 48000
KEYS = ("level", "dark", "diff", "rms")


def speech_and_silence(path: Path, seed: int = 0, excerpts: int = 5) -> None:
    """2.5 s speech excerpts alternating with 2 s of digital silence, 48 kHz mono 16-bit."""
    data, rate = sf.read(SPEECH, dtype="float32", always_2d=True)
    speech = soxr.resample(data.mean(1), rate, RATE)
    rng = np.random.default_rng(seed)
    parts = []
    for start in rng.choice(len(speech) - 3 * RATE, excerpts, replace=False):
        parts += [speech[start : start + int(2.5 * RATE)], np.zeros(2 * RATE, np.float32)]
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")


def frame_numbers(frames: list[dict]) -> np.ndarray:
    """Frame numbers from the RTP timestamps (exact: pts = index · 3600), else media time."""
    if all(f.get("rtp") is not None for f in frames):
        rtp = np.array([f["rtp"] for f in frames], np.int64)
        return ((rtp - rtp[0]) % 2**32) // 3600
    return np.rint(np.array([f["media_time"] for f in frames]) * 25).astype(int)


class SourceTap:
    """Records, per frame index, the mouth darkness and audio RMS the server hands to aiortc."""

    def __init__(self, box: list[int]) -> None:
        self.box = box
        self.dark: dict[int, float] = {}
        self.rms: dict[int, float] = {}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        put_video, put_audio = webrtc.AvatarVideoTrack.put, webrtc.AvatarAudioTrack.put_frame
        x0, y0, x1, y1 = self.box

        def video(track, frame):  # noqa: ANN001, ANN202
            if frame is not None:
                luma = frame.image[y0:y1, x0:x1] @ np.array([0.299, 0.587, 0.114])
                self.dark[frame.index] = 255 - float(luma.mean())
            put_video(track, frame)

        def audio(track, frame):  # noqa: ANN001, ANN202
            self.rms[frame.index] = float(np.sqrt(np.mean(frame.samples**2)))
            put_audio(track, frame)

        monkeypatch.setattr(webrtc.AvatarVideoTrack, "put", video)
        monkeypatch.setattr(webrtc.AvatarAudioTrack, "put_frame", audio)

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """(audio RMS, mouth darkness) per session frame index."""
        idx = sorted(set(self.dark) & set(self.rms))
        rms, dark = (np.array([d[i] for i in idx]) for d in (self.rms, self.dark))
        return tuple(on_grid(np.array(idx), rms, dark))


@dataclass
class LipSync:
    """Figures of one session (lags in frames of 40 ms)."""

    speech_motion: float  # mean mouth change per frame in speech…
    silence_motion: float  # …and in silence
    speech_frames: int
    silence_frames: int
    lag: float  # mouth opening behind the played audio envelope
    av_lag: float  # transport only: picture behind sound, the model excluded
    video_corr: float  # how well the frames seen match the frames sent
    audio_corr: float
    levels_seen: float  # share of frames with the played packet's level
    figures: dict  # everything, rounded, for the test's output


def lip_sync(report: dict, tap: SourceTap, keep: Path) -> LipSync:
    """The figures of the page's ``report`` against the server's ``tap``; the raw series are
    written to ``keep`` (JSON) for a look after a failure."""
    report = dict(report)
    frames, levels = report.pop("frames"), report.pop("audio_levels")
    src_rms, src_dark = tap.series()
    source = {"source": [src_rms.tolist(), src_dark.tolist()]}
    keep.write_text(json.dumps(report | {"frames": frames, "audio_levels": levels} | source))
    played = playout_levels(audio_while_shown(frames), levels)
    for frame, level in zip(frames, played, strict=True):
        frame["level"] = level
    index = frame_numbers(frames)
    level, dark, diff, rms = on_grid(index, *(np.array([f[k] for f in frames]) for k in KEYS))
    speech, silence, n_speech, n_silence = speech_silence_motion(level, diff)
    lag, corr = envelope_lag(level, dark)
    analyser_lag, _ = envelope_lag(rms, dark)
    src_lag, src_corr = envelope_lag(src_rms, src_dark)
    sync = av_offset(level, dark, src_rms, src_dark)
    levels_seen = float(np.isfinite(level).mean())
    figures = report | {
        "presented": len(frames),
        "motion_ratio": round(speech / silence, 1),
        "speech_frames": n_speech,
        "silence_frames": n_silence,
        "lag_ms": round(40 * lag),
        "lag_corr": round(corr, 2),
        "analyser_lag_ms": round(40 * analyser_lag),
        "levels_seen": round(levels_seen, 3),
        "source_lag_ms": round(40 * src_lag),
        "source_lag_corr": round(src_corr, 2),
        "transport_av_lag_ms": round(40 * sync["av_lag"]),
        "video_match_corr": round(sync["video_corr"], 3),
        "audio_match_corr": round(sync["audio_corr"], 3),
    }
    return LipSync(
        speech, silence, n_speech, n_silence, lag, sync["av_lag"], sync["video_corr"],
        sync["audio_corr"], levels_seen, figures,
    )  # fmt: skip
