"""Live server soak: long sessions plus connect/abort churn for half an hour, watching for drift
and leaks.

The server runs in its own process (``python -m server``). ``--long`` websocket clients speak
the bundled speech sample (tiled: speech with pauses) in real time for the whole run; meanwhile
a churn loop opens a short session every ``--churn-every`` seconds, half of which finish
normally and half of which vanish mid-stream (the socket is shut down without a websocket close).
Every 10 s the server's memory, threads and open files are sampled.

Recorded: per long session, the frames received and their lag behind the audio clock (receive
time minus the time the frame's audio was sent, fitted over the run: a growing backlog shows as
a slope), whether every video frame came with its own audio (video pts − audio pts = 0), and
the server's latency figures; for the server, memory after warm-up and its growth per hour
(least squares over the samples after warm-up), threads and open files at the start and end,
and the sessions still open after the run (must be 0); over all sessions, the silence filled in
while no audio arrived and the late audio made up (left out as quiet, or time-compressed),
from ``/metrics``.

    python -m bench.bench_soak [--minutes 30] [--long 2] [--churn-every 15] [--hop 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import time
import urllib.request
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from bench._common import write_result
from bench.bench_live import free_port, rss_mb, start_server
from clients.ws.client import CHUNK_MS
from engine.scheduler import StreamSettings
from mmgt.audio import load_audio
from mmgt.avatar import BUNDLED_AVATAR
from server.protocol import HEADER, KIND_AUDIO_PCM16, KIND_VIDEO_JPEG

FPS = 25
WARMUP_S = 300.0  # memory growth is fitted after this
SAMPLE_EVERY_S = 10.0


def proc_counts(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    threads = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Threads:")))
    return {
        "rss_mb": round(rss_mb(pid), 1),
        "threads": threads,
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def session_counters(base: str) -> dict[str, dict[str, float]]:
    """Per-session catch-up counters from the server's ``/metrics``: session → {idle,
    made_up_quiet, made_up_compressed} in seconds."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            session = s.labels.get("session")
            if s.name == "mmgt_session_idle_seconds_total":
                out.setdefault(session, {})["idle"] = s.value
            elif s.name == "mmgt_session_late_audio_made_up_seconds_total":
                out.setdefault(session, {})[f"made_up_{s.labels['method']}"] = s.value
    return out


def pcm_chunks(samples: np.ndarray, rate: int) -> list[bytes]:
    n = rate * CHUNK_MS // 1000
    pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
    return [pcm[i : i + n].tobytes() for i in range(0, pcm.size - n + 1, n)]


async def long_session(url: str, chunks: list[bytes], rate: int) -> dict:
    """Stream ``chunks`` in real time; record each frame's lag behind its audio and A/V pairs."""
    per_frame = rate // FPS
    recv_t: dict[int, float] = {}
    audio_pts: dict[int, int] = {}
    events: list[dict] = []
    t0 = 0.0
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": rate, "audio_rate": rate}))
        assert (await ws.receive_json())["type"] == "ready"

        async def send() -> None:
            nonlocal t0
            t0 = time.monotonic()
            for k, chunk in enumerate(chunks):
                await asyncio.sleep(max(0.0, t0 + k * CHUNK_MS / 1000 - time.monotonic()))
                await ws.send_bytes(chunk)
            await ws.send_str(json.dumps({"type": "finish"}))

        sender = asyncio.create_task(send())
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    kind, pts, index = HEADER.unpack_from(msg.data)
                    if kind == KIND_VIDEO_JPEG:
                        recv_t[index] = time.monotonic()
                    elif kind == KIND_AUDIO_PCM16:
                        audio_pts[index] = pts
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data))
                    if events[-1].get("type") == "done":
                        break
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    idx = np.array(sorted(recv_t))
    # The frame's audio ends at t0 + (i + 1) / fps on the sender's clock.
    lag = np.array([recv_t[i] for i in idx]) - (t0 + (idx + 1) / FPS)
    minutes = (idx / FPS) / 60.0
    half = len(idx) // 2
    done = next((e for e in events if e.get("type") == "done"), {})
    return {
        "frames": len(idx),
        "frames_expected": len(chunks) * CHUNK_MS // 40,
        "lag_ms_p50": round(float(np.median(lag)) * 1000, 1),
        "lag_ms_p95": round(float(np.percentile(lag, 95)) * 1000, 1),
        "lag_ms_first_half_median": round(float(np.median(lag[:half])) * 1000, 1),
        "lag_ms_second_half_median": round(float(np.median(lag[half:])) * 1000, 1),
        "lag_drift_ms_per_minute": round(float(np.polyfit(minutes, lag, 1)[0]) * 1000, 3),
        "lag_ms_median_by_5_minutes": [
            round(float(np.median(lag[(minutes >= m) & (minutes < m + 5)])) * 1000, 1)
            for m in range(0, int(minutes[-1]) + 1, 5)
            if ((minutes >= m) & (minutes < m + 5)).any()
        ],
        "frames_without_their_audio": int(sum(audio_pts.get(i) != i * per_frame for i in idx)),
        "server_latency_p50_ms": done.get("latency_p50_ms"),
        "server_latency_p95_ms": done.get("latency_p95_ms"),
        "errors": sum(e.get("type") == "error" for e in events),
    }


async def churn_session(url: str, chunks: list[bytes], abort: bool) -> str:
    """A short session that finishes normally or vanishes mid-stream; returns the outcome."""
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000}))
        if (await ws.receive_json())["type"] != "ready":
            return "refused"
        for chunk in chunks:
            await ws.send_bytes(chunk)
            await asyncio.sleep(CHUNK_MS / 1000)
        if abort:
            ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # no websocket close
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await ws.close()
            return "aborted"
        await ws.send_str(json.dumps({"type": "finish"}))
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data).get("type") == "done":
                return "finished"
        return "closed early"


async def churn(url: str, short: list[bytes], every_s: float, until: float) -> dict[str, int]:
    """Short sessions one after another, every ``every_s`` seconds, alternately finished and
    abandoned mid-stream; returns how many ended which way."""
    outcomes: dict[str, int] = {}
    k = 0
    while time.monotonic() < until:
        began = time.monotonic()
        try:
            out = await churn_session(url, short, abort=k % 2 == 1)
        except (aiohttp.ClientError, OSError) as exc:
            out = f"client error: {type(exc).__name__}"
        outcomes[out] = outcomes.get(out, 0) + 1
        k += 1
        await asyncio.sleep(max(0.0, began + every_s - time.monotonic()))
    return outcomes


async def soak(url: str, pid: int, args: argparse.Namespace, chunks: list[bytes], rate: int,
               short: list[bytes]) -> dict:  # fmt: skip
    start = time.monotonic()
    longs = [asyncio.create_task(long_session(url, chunks, rate)) for _ in range(args.long)]
    churner = asyncio.create_task(
        churn(url, short, args.churn_every, start + len(chunks) * 0.02 - 10)
    )
    samples: list[dict] = []
    counters: dict[str, dict[str, float]] = {}  # the last figures seen of every session
    base = url.replace("ws://", "http://").removesuffix("/ws")
    while not all(t.done() for t in longs):
        samples.append({"t": round(time.monotonic() - start, 1), **proc_counts(pid)})
        counters.update(await asyncio.to_thread(session_counters, base))
        await asyncio.sleep(start + len(samples) * SAMPLE_EVERY_S - time.monotonic())
    outcomes = await churner
    await asyncio.sleep(3)  # let the server close what the clients left
    end = proc_counts(pid)
    t = np.array([s["t"] for s in samples])
    rss = np.array([s["rss_mb"] for s in samples])
    after = t >= WARMUP_S
    slope = float(np.polyfit(t[after] / 3600, rss[after], 1)[0]) if after.sum() > 2 else None
    marks = range(0, int(t[-1]) + 1, 300)  # every 5 minutes
    trace = [samples[int(np.abs(t - m).argmin())] for m in marks]

    def total(key: str) -> float:
        return round(sum(c.get(key, 0.0) for c in counters.values()), 2)

    return {
        "long_sessions": [{"session": k + 1, **t.result()} for k, t in enumerate(longs)],
        # Over all sessions (sampled every 10 s, so a short session's last seconds are missed).
        "idle_fill_s": total("idle"),
        "late_audio_made_up_quiet_s": total("made_up_quiet"),
        "late_audio_made_up_compressed_s": total("made_up_compressed"),
        "churn_sessions": outcomes,
        "rss_mb_at_warmup": round(float(rss[after][0]), 1) if after.any() else None,
        "rss_mb_end_of_run": round(float(rss[-1]), 1),
        "rss_mb_peak": round(float(rss.max()), 1),
        "rss_growth_mb_per_hour": None if slope is None else round(slope, 1),
        "threads_start_end": [samples[0]["threads"], end["threads"]],
        "open_files_start_end": [samples[0]["fds"], end["fds"]],
        "server_every_5_minutes": [
            {"minute": round(s["t"] / 60), **{k: v for k, v in s.items() if k != "t"}}
            for s in trace
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--long", type=int, default=2, help="sessions that last the whole run")
    p.add_argument("--churn-every", type=float, default=15.0, help="seconds between short ones")
    p.add_argument("--driver", default="auto")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--hop", type=int, default=StreamSettings().hop_frames, help="server --hop")
    p.add_argument("--name", default="soak", help="result file bench/results/NAME.json")
    args = p.parse_args()
    speech, rate = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav")), 16000
    whole = np.tile(speech, int(np.ceil(args.minutes * 60 * rate / len(speech))))
    chunks = pcm_chunks(whole[: int(args.minutes * 60 * rate)], rate)
    short = pcm_chunks(speech[: rate * 4], rate)  # 4 s of speech per churn session
    port = free_port()
    server = start_server(port, args, args.long + 2)
    try:
        url = f"ws://127.0.0.1:{port}/ws"
        result = asyncio.run(soak(url, server.pid, args, chunks, rate, short))
        health = get_json(f"http://127.0.0.1:{port}/health")
        result["sessions_open_after_run"] = health["sessions"]
        result["driver"] = health["driver"]
    finally:
        server.terminate()
        server.wait(30)
    result["exit_code"] = server.returncode
    print(json.dumps(result, indent=1), flush=True)
    write_result(
        args.name,
        {
            "minutes": args.minutes,
            "long_sessions_count": args.long,
            "churn_every_s": args.churn_every,
            "frame_size": args.size,
            "hop_frames": args.hop,
            **result,
            "note": "server in its own process; clients in the benchmark process on the same "
            "2-core machine; lag = frame receive time minus the end of its audio on the "
            "sender's clock",
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
