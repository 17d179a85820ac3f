"""Benchmark of the warp renderer at 512²: frames per second with and without H.264 encoding.

Run: ``python -m bench.bench_warp``. Writes ``bench/results/warp.json``. The poses come from the
procedural driver on the bundled speech sample, so the mouth, eyes, head and arms all move.
Encoding uses :class:`mmgt.video.Mp4Writer` (libx264 ``veryfast``, CRF 20, its own thread).
Rendering is timed with OpenCV's default thread count (all cores, as ``mmgt render`` runs) and
with one thread (as each live session runs), always with one BLAS thread (as both run: NumPy's
OpenBLAS threads spin between the warp's small matrix products and take a core from the
encoder); render + encode is also timed with the default BLAS threads, for the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
from threadpoolctl import threadpool_limits

from bench._common import interleaved_times, median_time, write_result
from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers.procedural import ProceduralDriver
from mmgt.renderers.warp import WarpRenderer, render_frame
from mmgt.video import Mp4Writer

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--frames", type=int, default=250)
    args = ap.parse_args()

    avatar = load_avatar()
    poses = ProceduralDriver().generate(
        extract_light_features(load_audio(SPEECH)), avatar.reference_pose
    )
    points = poses.points[: args.frames]
    t0 = time.perf_counter()
    state = WarpRenderer().prepare(avatar)
    prepare_s = time.perf_counter() - t0

    def render_only() -> None:
        for p in points:
            render_frame(state, p)

    def render_and_encode() -> None:
        with tempfile.TemporaryDirectory() as tmp, Mp4Writer(Path(tmp) / "b.mp4", 512) as w:
            for p in points:
                w.write(render_frame(state, p))

    def one_blas_thread(fn):  # noqa: ANN001, ANN202
        def run() -> None:
            with threadpool_limits(limits=1, user_api="blas"):
                fn()

        return run

    times = interleaved_times(
        {
            "enc": one_blas_thread(render_and_encode),
            "enc_blas": render_and_encode,  # BLAS threads as NumPy starts them
            "only": one_blas_thread(render_only),
        },
        args.repeats,
    )
    only, enc, enc_blas = times["only"], times["enc"], times["enc_blas"]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    one = median_time(one_blas_thread(render_only), args.repeats)
    cv2.setNumThreads(threads)
    n = len(points)
    results = {
        "frame_size": 512,
        "frames_per_run": n,
        "prepare_avatar_state_ms": round(1000 * prepare_s, 2),
        "render_fps": round(n / only["median_s"], 1),
        "render_ms_per_frame": round(1000 * only["median_s"] / n, 3),
        "render_and_encode_fps": round(n / enc["median_s"], 1),
        "render_and_encode_fps_default_blas_threads": round(n / enc_blas["median_s"], 1),
        "opencv_threads": threads,
        "render_fps_1_thread": round(n / one["median_s"], 1),
        "render_ms_per_frame_1_thread": round(1000 * one["median_s"] / n, 3),
        "repeats": args.repeats,
        "targets": {"render_fps_min": 100},
    }
    print(write_result("warp", results))
    print(results)


if __name__ == "__main__":
    main()
