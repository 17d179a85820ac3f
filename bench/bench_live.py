"""Live engine under load: N websocket clients speaking in real time to one server.

The server runs in its own process (``python -m server``), the clients in this one. Each client
streams the bundled speech sample in 20 ms PCM16 chunks at real-time pace and reads frames.
Per session count we record, on the server side, the latency from an audio chunk's arrival to
the hand-over of the first encoded frame showing it (p50/p95 over all sessions' frames, from
the server's ``done`` figures), the sustained fps each client received, degradation (sessions
that degraded, the deepest level reached, the share of frames that repeat the image before, and
the longest run of one image: how long the picture froze), the server's CPU time per session
(cores) and its memory per session.

    python -m bench.bench_live [--sessions 1 3 4 5] [--seconds 20] [--driver auto] [--hop 2]
                               [--name live_hop2] [--server-root ../before]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench._common import write_result
from clients.ws.client import run_client, wav_chunks
from engine.scheduler import StreamSettings
from mmgt.audio import load_audio_native
from mmgt.avatar import BUNDLED_AVATAR

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def revision(root: Path) -> str:
    """The git commit the server ran from (``+changes`` if its tree differs from it)."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        if done.returncode:
            raise OSError(done.stderr)
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return head + ("+changes" if dirty else "")


def start_server(port: int, args: argparse.Namespace, sessions: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--port",
        str(port),
        "--driver",
        args.driver,
        "--max-sessions",
        str(max(sessions, 1)),
        "--size",
        str(args.size),
        "--hop",
        str(args.hop),
    ]
    proc = subprocess.Popen(
        cmd, cwd=args.server_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stdout.read() if proc.stdout else ''}")


def load_arguments(doc: str, name: str) -> argparse.ArgumentParser:
    """The options of a load benchmark: session counts, run length, the server's options, the
    result's name and the checkout whose server runs."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 3, 4, 5])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--driver", default="auto")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--hop", type=int, default=StreamSettings().hop_frames, help="server --hop")
    p.add_argument("--name", default=name, help="result file bench/results/NAME.json")
    p.add_argument(
        "--server-root",
        type=Path,
        default=ROOT,
        help="run the server of this checkout (A/B against another revision's git worktree)",
    )
    return p


async def one_client(url: str, samples: np.ndarray, rate: int) -> dict:
    got = await run_client(url, wav_chunks(samples, rate, realtime=True), sample_rate=rate)
    done = next(e for e in got.events if e.get("type") == "done")
    video = sorted(got.video)  # (index, jpeg, arrival)
    shown = [jpeg for _, jpeg, _ in video]
    times = [t for _, _, t in video]
    steady = times[25:]  # skip the first second (start-up)
    fps = (len(steady) - 1) / (steady[-1] - steady[0]) if len(steady) > 1 else 0.0
    levels = [e["level"] for e in got.events if e.get("type") == "state"]
    return {
        "frames": len(got.video),
        "fps": fps,
        "p50_ms": done.get("latency_p50_ms"),
        "p95_ms": done.get("latency_p95_ms"),
        "max_level": max(levels, default=0),
        # Images repeated under load (half frame rate or hold): equal to the frame before.
        "held": sum(a == b for a, b in itertools.pairwise(shown)),
        "longest_still": max(len(list(run)) for _, run in itertools.groupby(shown)),
        "errors": len(got.errors()),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_run(url: str, n: int, samples: np.ndarray, rate: int, pid: int) -> dict:
    base = rss_mb(pid)
    peak = base
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    clients = [asyncio.create_task(one_client(url, samples, rate)) for _ in range(n)]
    while not all(c.done() for c in clients):
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(0.5)
    server_cores = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    results = [c.result() for c in clients]
    return {
        "sessions": n,
        "fps_min": round(min(r["fps"] for r in results), 2),
        "latency_p50_ms_median": float(np.median([r["p50_ms"] for r in results])),
        "latency_p95_ms_max": max(r["p95_ms"] for r in results),
        "degraded_sessions": sum(r["max_level"] > 0 for r in results),
        "deepest_level": max(r["max_level"] for r in results),
        "held_frames_share": round(
            sum(r["held"] for r in results) / max(sum(r["frames"] for r in results), 1), 3
        ),
        "longest_still_frames": max(r["longest_still"] for r in results),
        "server_cpu_cores_per_session": round(server_cores / n, 3),
        "errors": sum(r["errors"] for r in results),
        "server_rss_idle_mb": round(base, 1),
        "server_rss_peak_mb": round(peak, 1),
        "memory_per_session_mb": round((peak - base) / n, 1),
        "holds_25fps": all(r["fps"] >= 24.5 and r["max_level"] == 0 for r in results),
    }


def run_counts(
    args: argparse.Namespace, measure: Callable[[int, int, int, bool], dict]
) -> list[dict]:
    """Per session count in ``args.sessions``, a new server and ``measure(port, sessions,
    server_pid, warm_up)``: first one warm-up session (its figures dropped), then the run."""
    runs = []
    for n in args.sessions:
        port = free_port()
        server = start_server(port, args, n)
        try:
            measure(port, 1, server.pid, True)
            run = measure(port, n, server.pid, False)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as r:
                run["driver"] = json.loads(r.read())["driver"]
        finally:
            server.terminate()
            server.wait(30)
        print(run, flush=True)
        runs.append(run)
    return runs


def main() -> None:
    args = load_arguments(__doc__, "live").parse_args()
    samples, rate = load_audio_native(BUNDLED_AVATAR.with_name("speech_sample.wav"))
    samples = np.tile(samples, int(np.ceil(args.seconds * rate / len(samples))))
    samples = samples[: int(args.seconds * rate)]

    def measure(port: int, n: int, pid: int, warm_up: bool) -> dict:
        speech = samples[: rate * 3] if warm_up else samples
        return asyncio.run(load_run(f"ws://127.0.0.1:{port}/ws", n, speech, rate, pid))

    runs = run_counts(args, measure)
    holding = [r["sessions"] for r in runs if r["holds_25fps"]]
    write_result(
        args.name,
        {
            "seconds_per_client": args.seconds,
            "frame_size": args.size,
            "hop_frames": args.hop,
            "runs": runs,
            "max_sessions_at_25fps": max(holding, default=0),
            "p95_at_3_sessions_ms": next(
                (r["latency_p95_ms_max"] for r in runs if r["sessions"] == 3), None
            ),
            "note": "server in its own process; clients in the benchmark process on the same "
            "2-core machine; latency measured on the server",
            "server_revision": revision(args.server_root),
        },
    )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
