"""python -m clients.ws: speak a wav file (or the microphone) through a running server.

python -m clients.ws --wav speech.wav --out out.mp4
python -m clients.ws --mic --seconds 10 --out me.mp4 --preview
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

from clients.ws.client import ServerError, run_client, wav_chunks, write_mp4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.ws", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", type=Path, help="audio file to speak (any format ffmpeg reads)")
    src.add_argument("--mic", action="store_true", help="capture the microphone (sounddevice)")
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="server websocket URL")
    p.add_argument("--out", type=Path, help="write the received video + audio to this mp4")
    p.add_argument("--avatar", help="photo to upload, or an avatar id (default: bundled)")
    p.add_argument("--fast", action="store_true", help="send and receive as fast as possible")
    p.add_argument("--seconds", type=float, default=10.0, help="--mic: recording length")
    p.add_argument("--audio-rate", type=int, help="rate of the audio sent back")
    p.add_argument("--preview", action="store_true", help="show frames in a window as they come")
    p.add_argument("--format", choices=("jpeg", "fmp4"), default="jpeg",
                   help="jpeg: frames + PCM; fmp4: one fragmented MP4 (H.264 + AAC)")  # fmt: skip
    args = p.parse_args(argv)
    if args.preview and args.format != "jpeg":
        p.error("--preview shows JPEG frames (use --format jpeg)")
    return args


async def mic_chunks(seconds: float, rate: int = 16000):  # noqa: ANN201 - async generator
    """PCM16 chunks from the default input device, 20 ms each."""
    import sounddevice as sd

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def callback(data, frames, time_info, status) -> None:  # noqa: ANN001, ARG001
        loop.call_soon_threadsafe(queue.put_nowait, bytes(data))

    blocks = int(seconds * 50)
    with sd.RawInputStream(
        rate, blocksize=rate // 50, channels=1, dtype="int16", callback=callback
    ):
        for _ in range(blocks):
            yield await queue.get()


def preview_callback():  # noqa: ANN201
    try:
        import cv2

        cv2.namedWindow("avatar")
    except Exception as exc:  # headless OpenCV builds have no GUI
        raise SystemExit(
            f"--preview needs a GUI build of OpenCV (pip install opencv-python): {exc}"
        ) from exc

    def show(index: int, jpeg: bytes) -> None:  # noqa: ARG001
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        cv2.imshow("avatar", img)
        cv2.waitKey(1)

    return show


async def main_async(args: argparse.Namespace, avatar: Path | str | None) -> int:
    if args.mic:
        rate, source = 16000, mic_chunks(args.seconds)
    else:
        from mmgt.audio import load_audio_native

        samples, rate = load_audio_native(args.wav)
        source = wav_chunks(samples, rate, realtime=not args.fast)
    received = await run_client(
        args.url,
        source,
        sample_rate=rate,
        avatar=avatar,
        pace="asap" if args.fast else "realtime",
        audio_rate=args.audio_rate,
        on_frame=preview_callback() if args.preview else None,
        video_format=args.format,
    )
    stats = next((e for e in reversed(received.events) if e.get("type") == "done"), {})
    for err in received.errors():
        print(f"server: {err['code']}: {err['message']}", file=sys.stderr)
    line = f"{len(received.video) or received.fmp4_frames} frames"
    if "latency_p50_ms" in stats:
        line += f", latency p50 {stats['latency_p50_ms']} ms / p95 {stats['latency_p95_ms']} ms"
    print(line)
    if args.out:
        print(write_mp4(received, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    avatar = None
    if args.avatar:
        avatar = Path(args.avatar) if Path(args.avatar).is_file() else args.avatar
    try:
        return asyncio.run(main_async(args, avatar))
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
