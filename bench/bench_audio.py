"""Benchmark of the audio front-end: decoding + resampling, light features, live resampling.

Run: ``python -m bench.bench_audio`` (from the repo root). Writes ``bench/results/audio.json``.
Real-time factor (RTF) = processing time / audio duration (lower is better; < 1 is real time).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soxr

from bench._common import median_time, write_result
from mmgt.audio import (
    SAMPLE_RATE,
    LightFeatureStream,
    StreamingResampler,
    extract_light_features,
    load_audio,
)

SPEECH = Path(__file__).resolve().parents[1] / "mmgt" / "assets" / "speech_sample.wav"
CHUNK_MS = 20


def _stream_features(x: np.ndarray, chunk: int) -> int:
    stream = LightFeatureStream()
    frames = sum(len(stream.push(x[i : i + chunk])) for i in range(0, x.size, chunk))
    return frames + len(stream.flush())


def _stream_resample(x: np.ndarray, rate: int, chunk: int) -> int:
    resampler = StreamingResampler(rate)
    out = sum(resampler.push(x[i : i + chunk]).size for i in range(0, x.size, chunk))
    return out + resampler.flush().size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    repeats = args.repeats

    x = load_audio(SPEECH)  # (n,) float32 at 16 kHz
    seconds = x.size / SAMPLE_RATE
    chunk = SAMPLE_RATE * CHUNK_MS // 1000  # 320 samples
    n_chunks = -(-x.size // chunk)

    decode = median_time(lambda: load_audio(SPEECH), repeats=repeats)
    offline = median_time(lambda: extract_light_features(x), repeats=repeats)
    streaming = median_time(lambda: _stream_features(x, chunk), repeats=repeats)
    x48 = soxr.resample(x, SAMPLE_RATE, 48000)  # a typical WebRTC/microphone rate
    resample = median_time(
        lambda: _stream_resample(x48, 48000, 48000 * CHUNK_MS // 1000), repeats=repeats
    )

    results = {
        "audio_seconds": round(seconds, 3),
        "input": "mmgt/assets/speech_sample.wav (22.05 kHz mono PCM16)",
        "decode_resample_16k": {**decode, "rtf": decode["median_s"] / seconds},
        "light_features_offline": {
            **offline,
            "rtf": offline["median_s"] / seconds,
            "frames": len(extract_light_features(x)),
        },
        "light_features_streaming_20ms": {
            **streaming,
            "rtf": streaming["median_s"] / seconds,
            "per_chunk_us": 1e6 * streaming["median_s"] / n_chunks,
        },
        "streaming_resample_48k_to_16k_20ms": {
            **resample,
            "rtf": resample["median_s"] / seconds,
            "per_chunk_us": 1e6 * resample["median_s"] / n_chunks,
        },
    }
    path = write_result("audio", results)
    for name, value in results.items():
        if isinstance(value, dict):
            print(f"{name:40s} median {value['median_s'] * 1e3:8.2f} ms  RTF {value['rtf']:.5f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
