"""Live engine under load over WebRTC: N peers speaking in real time, as browsers do.

The server runs in its own process (``python -m server``); the peers are aiortc clients
(:mod:`clients.rtc`) in this process, each sending the bundled speech sample as a live Opus
microphone track and receiving the avatar's video (decoded, as a browser would) and voice.
Per session count we record what the peers saw: frames per second received, the longest
gap in the video's timestamps (how long the picture stood still: a held image is not sent
again), the session's degradation level and its latency from the server's stats on the data
channel, and the server's CPU time and memory per session. The websocket figures are
``bench.bench_live``; this one adds what VP8 encoding and aiortc cost (about 5 ms a frame at 512²
for the encoder alone).

    python -m bench.bench_webrtc [--sessions 1 3 4 5] [--seconds 20] [--server-root ../before]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from bench._common import write_result
from bench.bench_live import (
    cpu_seconds,
    load_arguments,
    revision,
    rss_mb,
    run_counts,
)
from clients import rtc
from mmgt.audio import load_audio_native
from mmgt.avatar import BUNDLED_AVATAR

WARM_UP_S = 3.0  # left out of the figures: connection set-up and the first window
VIDEO_CLOCK = 90000


class Timeline(rtc.Received):
    """Received video as (arrival time, RTP timestamp) pairs; events as usual."""

    def __init__(self) -> None:
        super().__init__()
        self.video: list[tuple[float, int]] = []

    async def consume(self, track: MediaStreamTrack) -> None:
        if track.kind != "video":
            return await super().consume(track)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()  # decoded by aiortc, as a browser would
                self.video.append((time.monotonic(), frame.pts))


async def one_peer(base: str, samples: np.ndarray, rate: int, seconds: float) -> dict:
    got = await rtc.speak(base, samples, rate, seconds, received=Timeline(), loop=True)
    start = got.video[0][0] + WARM_UP_S if got.video else 0.0
    steady = [(t, pts) for t, pts in got.video if t >= start]
    span = steady[-1][0] - steady[0][0] if len(steady) > 1 else 0.0
    gaps = np.diff([pts for _, pts in steady]) / VIDEO_CLOCK if len(steady) > 1 else [0.0]
    stats = [e for e in got.events if e.get("type") == "stats"]
    latencies = [e["latency_ms"] for e in stats if e.get("latency_ms") is not None]
    return {
        "frames": len(got.video),
        "fps": (len(steady) - 1) / span if span else 0.0,
        "longest_gap_ms": 1000 * float(max(gaps)),
        "max_level": max((e["level"] for e in stats), default=0),
        "held": max((e["held"] for e in stats), default=0),
        # Frames the session made: handed to the encoder, held (not encoded again) or skipped
        # as too late.
        "made": max((e["frames"] + e["skipped"] for e in stats), default=0),
        "latency_ms": latencies,
    }


async def load_run(base: str, n: int, samples: np.ndarray, rate: int, seconds: float,
                   pid: int) -> dict:  # fmt: skip
    idle = rss_mb(pid)
    peak = idle
    peers = [asyncio.create_task(one_peer(base, samples, rate, seconds)) for _ in range(n)]
    await asyncio.sleep(WARM_UP_S + 1.0)
    cpu0, own0, t0 = cpu_seconds(pid), time.process_time(), time.monotonic()
    while not all(p.done() for p in peers):
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.5)
    wall = time.monotonic() - t0
    server_cores = (cpu_seconds(pid) - cpu0) / wall
    results = [p.result() for p in peers]
    latencies = [v for r in results for v in r["latency_ms"]]
    made = sum(r["made"] for r in results)
    return {
        "sessions": n,
        "received_fps_min": round(min(r["fps"] for r in results), 2),
        "longest_gap_ms": round(max(r["longest_gap_ms"] for r in results)),
        "latency_ms_median": float(np.median(latencies)) if latencies else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies else None,
        "degraded_sessions": sum(r["max_level"] > 0 for r in results),
        "deepest_level": max(r["max_level"] for r in results),
        "held_frames_share": round(sum(r["held"] for r in results) / max(made, 1), 3),
        "server_cpu_cores_per_session": round(server_cores / n, 3),
        "client_cpu_cores": round((time.process_time() - own0) / wall, 2),
        "memory_per_session_mb": round((peak - idle) / n, 1),
        "holds_25fps": all(r["fps"] >= 24.5 and r["max_level"] == 0 for r in results),
    }


def main() -> None:
    args = load_arguments(__doc__, "webrtc").parse_args()
    samples, rate = load_audio_native(BUNDLED_AVATAR.with_name("speech_sample.wav"))

    def measure(port: int, n: int, pid: int, warm_up: bool) -> dict:
        seconds = WARM_UP_S + 2 if warm_up else args.seconds
        return asyncio.run(load_run(f"http://127.0.0.1:{port}", n, samples, rate, seconds, pid))

    runs = run_counts(args, measure)
    holding = [r["sessions"] for r in runs if r["holds_25fps"]]
    write_result(
        args.name,
        {
            "seconds_per_peer": args.seconds,
            "frame_size": args.size,
            "hop_frames": args.hop,
            "runs": runs,
            "max_sessions_at_25fps": max(holding, default=0),
            "note": "server in its own process; aiortc peers (decoding the video) in the "
            "benchmark process on the same 2-core machine; the first "
            f"{WARM_UP_S:g} s of each peer left out",
            "server_revision": revision(args.server_root),
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
