"""Benchmark of ``mmgt render`` on a 60 s clip: steady state and cold start, reported apart.

Run: ``python -m bench.bench_render``. Writes ``bench/results/render.json``.

* **steady state**: frames per second of the work that grows with the clip inside
  :func:`render_video` with the default driver: audio decoding, motion generation (the driver)
  and rendering + encoding; excluding process start, imports, model set-up and avatar
  preparation. Reported as a multiple of real time (25 fps = 1×), with each part's share.
* **cold start**: wall time of the whole ``mmgt render`` command in a new process, from start to
  exit, for the same clip; and the time to the first frame is the part before rendering.
* **memory**: the peak resident memory of that process, and of one more for a clip
  ``--long-seconds`` long, giving how much each minute of audio adds (the decoded audio, the
  features and the poses of the whole clip are held while it renders).
The 60 s clip is the bundled speech sample repeated, written to a temporary wav.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench._common import write_result
from mmgt.audio import load_audio, write_wav
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.offline import PER_CLIP_TIMINGS, render_video

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--long-seconds", type=float, default=300.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = _clip(Path(tmp) / "clip.wav", args.seconds)
        steady, setup, parts = [], [], []
        for _ in range(args.repeats):
            res = render_video(wav, Path(tmp) / "out.mp4", progress=False)
            steady.append(res.frames / res.work_s)
            setup.append(sum(res.timings.values()) - res.work_s)
            parts.append({k: res.timings[k] for k in PER_CLIP_TIMINGS})
        cold, peak = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            peak.append(_render_process(wav, Path(tmp) / "cold.mp4"))
            cold.append(time.perf_counter() - t0)
        long_wav = _clip(Path(tmp) / "long.wav", args.long_seconds)
        long_peak = _render_process(long_wav, Path(tmp) / "long.mp4")
    fps = statistics.median(steady)
    results = {
        "clip_seconds": args.seconds,
        "frame_size": 512,
        "steady_state_fps": round(fps, 1),
        "steady_state_x_realtime": round(fps / 25.0, 2),
        "steady_state_ms_per_second_of_video": {
            k: round(1000 * statistics.median(p[k] for p in parts) / args.seconds, 1)
            for k in PER_CLIP_TIMINGS
        },
        "driver": res.driver,
        "setup_in_process_s": round(statistics.median(setup), 2),
        "cold_start_wall_s": round(statistics.median(cold), 2),
        "cold_start_x_realtime": round(args.seconds / statistics.median(cold), 2),
        "peak_rss_mb": round(statistics.median(peak)),
        "long_clip_seconds": args.long_seconds,
        "long_clip_peak_rss_mb": round(long_peak),
        "rss_mb_per_audio_minute": round(
            (long_peak - statistics.median(peak)) / ((args.long_seconds - args.seconds) / 60), 1
        ),
        "repeats": args.repeats,
        "targets": {"steady_state_x_realtime_min": 4.0},
    }
    print(write_result("render", results))
    print(results)


def _clip(path: Path, seconds: float) -> Path:
    """The bundled speech sample repeated to ``seconds``, as a 16 kHz wav."""
    speech = load_audio(SPEECH)
    n = int(seconds * 16000)
    write_wav(path, np.tile(speech, n // len(speech) + 1)[:n], 16000)
    return path


def _render_process(wav: Path, out: Path) -> float:
    """Run ``mmgt render`` in a new process; its own peak resident memory in MB."""
    exe = Path(sys.executable).with_name("mmgt")
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [str(exe), "render", "--audio", str(wav), "--out", str(out), "-q"],
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"mmgt render failed: {err.read().decode(errors='replace')}")
    return usage.ru_maxrss / 1024  # KiB on Linux


if __name__ == "__main__":
    main()
