"""Lip-sync figures from a per-frame series: mouth motion in speech vs. silence, and the lag
between the audio envelope and the mouth opening. Used by the browser test on what the page
measured and on the server's own frames (the reference: in sync by construction)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SILENCE_RMS = 0.003  # digital silence through opus stays far below this
SPEECH_RMS = 0.02
GUARD = 6  # frames (240 ms) around speech that count as neither speech nor silence


def on_grid(index: np.ndarray, *series: np.ndarray) -> list[np.ndarray]:
    """Put samples taken at frame numbers ``index`` on a dense grid (NaN where none)."""
    index = np.asarray(index, int)
    index = index - index.min()
    out = []
    for values in series:
        grid = np.full(index.max() + 1, np.nan)
        grid[index] = values
        out.append(grid)
    return out


def audio_while_shown(frames: list[dict], rate: int = 48000, fps: int = 25) -> list[int | None]:
    """Per presented frame, the audio RTP timestamp playing in the middle of its time on screen.

    A frame stays up from its expected display time until the next frame's, and it shows the
    motion of the audio played over that interval (the session pairs frame ``i`` with audio
    ``[i, i + 1)`` frame periods). The page records the audio RTP timestamp playing at each
    display time (``audio_rtp``); the middle of the interval adds half of it (half a nominal
    frame for the last one)."""
    out: list[int | None] = []
    for k, frame in enumerate(frames):
        if frame.get("audio_rtp") is None:
            out.append(None)
            continue
        if k + 1 < len(frames):
            half_ms = (frames[k + 1]["shown"] - frame["shown"]) / 2
        else:
            half_ms = 500 / fps
        out.append(int(frame["audio_rtp"] + round(half_ms * rate / 1000)))
    return out


def playout_levels(
    audio_rtp: Sequence[int | None], levels: list[tuple[int, float]], packet: int = 960
) -> np.ndarray:
    """The level of the received audio packet playing at each of the given audio RTP
    timestamps (NaN where that packet's level was not seen); ``levels`` pairs each packet's
    RTP timestamp with its level. RTP timestamps wrap at 2³², so both are unwrapped around the
    first packet."""
    if not levels:
        return np.full(len(audio_rtp), np.nan)
    ref = levels[0][0]

    def unwrap(rtp: np.ndarray) -> np.ndarray:
        return (np.asarray(rtp, np.int64) - ref + 2**31) % 2**32 - 2**31

    keys = unwrap(np.array([k for k, _ in levels]))
    order = np.argsort(keys)
    keys, values = keys[order], np.array([v for _, v in levels], float)[order]
    at = np.array([np.nan if r is None else r for r in audio_rtp], float)
    known = np.isfinite(at)
    target = np.zeros(len(at), np.int64)
    target[known] = unwrap(at[known].astype(np.int64))
    i = np.searchsorted(keys, target, side="right") - 1
    ok = known & (i >= 0) & (target - keys[np.maximum(i, 0)] < packet)
    return np.where(ok, values[np.maximum(i, 0)], np.nan)


def speech_silence_motion(rms: np.ndarray, motion: np.ndarray) -> tuple[float, float, int, int]:
    """Mean mouth motion in speech frames and in silence frames well away from speech.

    Returns (speech motion, silence motion, speech frames, silence frames)."""
    rms = np.asarray(rms, float)
    known = np.isfinite(rms) & np.isfinite(motion)  # frames the page did not present: NaN
    loud = np.nan_to_num(rms) > SILENCE_RMS
    near = np.convolve(loud, np.ones(2 * GUARD + 1), mode="same") > 0
    speech = known & (np.nan_to_num(rms) > SPEECH_RMS)
    silence = known & ~near
    return (
        float(np.mean(motion[speech])) if speech.any() else float("nan"),
        float(np.mean(motion[silence])) if silence.any() else float("nan"),
        int(speech.sum()),
        int(silence.sum()),
    )


def envelope_lag(audio: np.ndarray, mouth: np.ndarray, max_lag: int = 5) -> tuple[float, float]:
    """Lag (frames, > 0: the mouth follows the audio) maximising the correlation of the audio
    envelope with the mouth opening over ±``max_lag`` frames, refined by a parabola through the
    peak; returns (lag, peak correlation)."""
    a = np.asarray(audio, float)
    m = np.asarray(mouth, float)
    corr = []
    for k in range(-max_lag, max_lag + 1):
        x, y = (a[: len(a) - k], m[k:]) if k >= 0 else (a[-k:], m[: len(m) + k])
        ok = np.isfinite(x) & np.isfinite(y)
        corr.append(np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 10 else np.nan)
    corr = np.nan_to_num(np.array(corr), nan=-1.0)
    i = int(np.argmax(corr))
    lag = float(i - max_lag)
    if 0 < i < len(corr) - 1:
        c0, c1, c2 = corr[i - 1 : i + 2]
        denom = c0 - 2 * c1 + c2
        if denom < 0:
            lag += 0.5 * (c0 - c2) / denom
    return lag, float(corr[i])


def best_offset(seen: np.ndarray, source: np.ndarray, offsets: range) -> tuple[float, float]:
    """The offset ``d`` (frames, parabola-refined) for which ``seen[k]`` best matches
    ``source[k + d]`` (Pearson correlation over the overlap); returns (d, correlation)."""
    seen, source = np.asarray(seen, float), np.asarray(source, float)
    corr = []
    for d in offsets:
        k = np.arange(max(0, -d), min(len(seen), len(source) - d))
        x, y = seen[k], source[k + d]
        ok = np.isfinite(x) & np.isfinite(y)
        corr.append(np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 50 else np.nan)
    corr = np.nan_to_num(np.array(corr), nan=-1.0)
    i = int(np.argmax(corr))
    best = float(offsets[i])
    if 0 < i < len(corr) - 1:
        c0, c1, c2 = corr[i - 1 : i + 2]
        if c0 - 2 * c1 + c2 < 0:
            best += 0.5 * (c0 - c2) / (c0 - 2 * c1 + c2)
    return best, float(corr[i])


def av_offset(
    seen_audio: np.ndarray, seen_mouth: np.ndarray, src_audio: np.ndarray, src_mouth: np.ndarray
) -> dict:
    """Transport A/V offset from the same signals at both ends: which source frame is on screen
    (mouth series) and which source frame's audio is heard at that moment (audio series).
    ``av_lag`` > 0: the picture is late against the sound. All figures in frames."""
    video, video_corr = best_offset(seen_mouth, src_mouth, range(-20, len(src_mouth) // 2))
    v = round(video)
    audio, audio_corr = best_offset(seen_audio, src_audio, range(v - 8, v + 9))
    return {
        "video_offset": video,
        "video_corr": video_corr,
        "audio_offset": audio,
        "audio_corr": audio_corr,
        "av_lag": audio - video,
    }
