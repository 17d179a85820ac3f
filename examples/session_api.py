"""The engine's Python API in one file: speech streamed into a live :class:`Session`, as a TTS
or a voice-agent framework (LiveKit, pipecat) would, and the typed frames it yields.

    .venv/bin/python examples/session_api.py [--audio SPEECH] [--image PHOTO] [--out OUT.mp4]

The speech goes in as 20 ms chunks, split into two "utterances" (``end_segment``), with a
``mark`` every second (captions) and the head calmed for the second utterance
(``set_motion``). Every video frame comes with the audio that plays with it; the frames are
written to an mp4 at the end. No server and no network: this is what a transport wraps.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path

import numpy as np

from engine.engine import Engine, EngineConfig
from engine.frames import AudioFrame, Mark, SegmentEnd, VadEvent, VideoFrame
from mmgt.audio import load_audio_native
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers.controls import MotionControls
from mmgt.video import Mp4Writer

CHUNK_S = 0.02


async def speak(engine: Engine, image: Path | None, audio: Path, out: Path) -> dict[str, int]:
    avatar = load_avatar(image, frame_size=256)
    samples, rate = load_audio_native(audio)  # (n,) float32 at the file's own rate
    # A file is converted as fast as it renders: no idle fill, no degradation under load.
    settings = dataclasses.replace(engine.config.stream, realtime=False, output_rate=rate)
    session = engine.open_session(avatar, input_rate=rate, settings=settings, idle=False)
    half, chunk = len(samples) // 2, int(rate * CHUNK_S)
    for start in range(0, len(samples), chunk):
        if start and start % rate < chunk:
            session.mark(f"{start // rate} s")  # comes back just before the frame it plays in
        if start <= half < start + chunk:
            session.end_segment()  # the first utterance is complete
            session.set_motion(MotionControls(head=0.3))  # a calmer head from here on
        session.push_audio(samples[start : start + chunk])
    session.finish()

    images, sound, counts = [], [], {"video": 0, "marks": 0, "segments": 0, "vad": 0}
    async for item in session:  # typed frames, in play order
        if isinstance(item, VideoFrame):
            images.append(item.image)  # (S, S, 3) uint8, item.pts seconds
            counts["video"] += 1
        elif isinstance(item, AudioFrame):
            sound.append(item.samples)  # the audio that plays with the last video frame
        elif isinstance(item, Mark):
            counts["marks"] += 1
        elif isinstance(item, SegmentEnd):
            counts["segments"] += 1
        elif isinstance(item, VadEvent):
            counts["vad"] += 1
    await session.aclose()
    with Mp4Writer(out, avatar.frame_size, audio=np.concatenate(sound), audio_rate=rate) as mp4:
        for image in images:
            mp4.write(image)
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--audio", type=Path, default=BUNDLED_AVATAR.with_name("speech_sample.wav"))
    p.add_argument("--image", type=Path, help="photo (default: the bundled avatar)")
    p.add_argument("--out", type=Path, default=Path("out/session.mp4"))
    p.add_argument("--driver", default="auto", choices=("auto", "smga", "procedural"))
    args = p.parse_args(argv)

    async def run() -> dict[str, int]:
        engine = Engine(EngineConfig(driver=args.driver))
        try:
            return await speak(engine, args.image, args.audio, args.out)
        finally:
            await engine.aclose()

    counts = asyncio.run(run())
    print(", ".join(f"{v} {k}" for k, v in counts.items()), "→", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
