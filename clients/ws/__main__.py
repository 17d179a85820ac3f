"""python -m clients.ws: speak a wav file (or the microphone) through a running server.

python -m clients.ws --wav speech.wav --out out.mp4
python -m clients.ws --mic --out me.mp4 --preview     (Ctrl+C ends the recording)
python -m clients.ws --list-devices
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np

from clients.ws.client import ServerError, run_client, trusting, wav_chunks, write_mp4
from mmgt.drivers.controls import add_motion_arguments, controls_from_args
from mmgt.errors import InputError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m clients.ws", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--wav", type=Path, help="audio file to speak (any format ffmpeg reads)")
    src.add_argument("--mic", action="store_true", help="capture the microphone (sounddevice)")
    src.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--device", help="--mic: input device, by index or name part (default: the "
                   "system default)")  # fmt: skip
    p.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="server websocket URL")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--cafile", type=Path, help="wss: also trust this certificate (PEM), e.g. "
                     "the server's self-signed --cert")  # fmt: skip
    tls.add_argument("--insecure", action="store_true",
                     help="wss: do not verify the server's certificate")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the received video + audio to this mp4")
    p.add_argument("--avatar", help="photo to upload, or an avatar id (default: bundled)")
    p.add_argument("--fast", action="store_true", help="send and receive as fast as possible")
    p.add_argument("--seconds", type=float, default=0.0,
                   help="--mic: recording length (0: until Ctrl+C)")  # fmt: skip
    p.add_argument("--audio-rate", type=int, help="rate of the audio sent back")
    p.add_argument("--preview", action="store_true", help="show frames in a window as they come")
    p.add_argument("--format", choices=("jpeg", "fmp4"), default="jpeg",
                   help="jpeg: frames + PCM; fmp4: one fragmented MP4 (H.264 + AAC)")  # fmt: skip
    add_motion_arguments(p)
    args = p.parse_args(argv)
    if args.preview and args.format != "jpeg":
        p.error("--preview shows JPEG frames (use --format jpeg)")
    try:
        args.motion = controls_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


class MicError(Exception):
    """The microphone cannot be opened (no PortAudio, no such device, no input)."""


class CertificateError(Exception):
    """``--cafile`` is not a readable PEM certificate."""


def open_mic(device: str | None) -> tuple[object, int]:
    """Resolve ``device`` (index, name part or None) to a sounddevice input and a sample rate
    it accepts: 16 kHz if it can, else its own default rate (the server resamples)."""
    try:
        import sounddevice as sd
    except OSError as exc:  # libportaudio2 missing
        raise MicError(f"PortAudio is not available ({exc}); install libportaudio2") from exc
    dev: object = int(device) if device is not None and device.isdigit() else device
    try:
        info = sd.query_devices(dev, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        raise MicError(f"no microphone {device!r}: {exc}" if device else
                       f"no default microphone: {exc}") from exc  # fmt: skip
    for rate in (16000, int(info["default_samplerate"])):
        try:
            sd.check_input_settings(info["index"], channels=1, dtype="int16", samplerate=rate)
            return info["index"], rate
        except (ValueError, sd.PortAudioError):
            continue
    raise MicError(f"{info['name']} accepts neither 16 kHz nor its default rate as mono PCM16")


MIC_SILENT_S = 2.0  # no block from the device this long: it is gone (unplugged, suspended)


async def mic_chunks(  # noqa: ANN201
    device: object, rate: int, seconds: float, stop: asyncio.Event, silent_s: float = MIC_SILENT_S
):
    """PCM16 chunks of 20 ms from ``device`` until ``seconds`` (0: no limit), ``stop``, or the
    device delivering nothing for ``silent_s`` (then the recording so far is kept)."""
    import sounddevice as sd

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def callback(data, frames, time_info, status) -> None:  # noqa: ANN001, ARG001
        loop.call_soon_threadsafe(queue.put_nowait, bytes(data))

    blocks = int(seconds * 50) if seconds > 0 else None
    sent = 0
    with sd.RawInputStream(
        rate, blocksize=rate // 50, device=device, channels=1, dtype="int16", callback=callback
    ):
        print("recording: speak now (Ctrl+C to finish)", file=sys.stderr)
        waiter = asyncio.ensure_future(stop.wait())
        get: asyncio.Future[bytes] | None = None
        try:
            while blocks is None or sent < blocks:
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait(
                    {get, waiter}, timeout=silent_s, return_when=asyncio.FIRST_COMPLETED
                )
                if not get.done():
                    if not waiter.done():
                        print("the microphone stopped delivering audio (unplugged?); ending "
                              "the recording", file=sys.stderr)  # fmt: skip
                    break
                sent += 1
                yield get.result()
        finally:
            for task in (waiter, get):
                if task is not None:
                    task.cancel()
    print(f"recorded {sent / 50:.1f} s", file=sys.stderr)


def list_devices() -> int:
    try:
        import sounddevice as sd
    except OSError as exc:
        print(f"error: PortAudio is not available ({exc})", file=sys.stderr)
        return 1
    print(sd.query_devices())
    return 0


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


def client_tls(args: argparse.Namespace) -> ssl.SSLContext | bool:
    """What ``run_client`` verifies a wss server's certificate with (``--cafile``,
    ``--insecure``, else the system's CAs)."""
    if args.insecure:
        return False
    if args.cafile is None:
        return True
    try:
        return trusting(args.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(f"cannot use --cafile {args.cafile}: {exc}") from exc


def connection_error(url: str, exc: OSError) -> str:
    """One line for a server that cannot be reached, with the fix for an untrusted certificate."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"the certificate of {url} is not trusted ({exc.certificate_error}); for a "
            "self-signed certificate pass --cafile CERT.pem (the server's --cert), or --insecure"
        )
    return f"cannot reach {url}: {exc}"


async def main_async(
    args: argparse.Namespace,
    avatar: Path | str | None,
    on_frame: Callable[[int, bytes], None] | None = None,
) -> int:
    tls = client_tls(args)
    if args.mic:
        device, rate = open_mic(args.device)
        # The first Ctrl+C ends the recording (the reply still arrives and is written); a
        # second one aborts.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def first_interrupt() -> None:
            stop.set()
            loop.remove_signal_handler(signal.SIGINT)

        loop.add_signal_handler(signal.SIGINT, first_interrupt)
        source = mic_chunks(device, rate, args.seconds, stop)
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
        on_frame=on_frame,
        video_format=args.format,
        ssl=tls,
        motion=None if args.motion.neutral else args.motion.as_dict(),
    )
    stats = next((e for e in reversed(received.events) if e.get("type") == "done"), {})
    for err in received.errors():
        print(f"server: {err['code']}: {err['message']}", file=sys.stderr)
    line = f"{len(received.video) or received.fmp4_frames} frames"
    if "latency_p50_ms" in stats:
        line += f", latency p50 {stats['latency_p50_ms']} ms / p95 {stats['latency_p95_ms']} ms"
    print(line)
    if args.out:
        if not (received.video or received.fmp4):
            print(f"error: no video came back; {args.out} was not written", file=sys.stderr)
            return 1
        print(write_mp4(received, args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_devices:
        return list_devices()
    avatar = None
    if args.avatar:
        avatar = Path(args.avatar) if Path(args.avatar).is_file() else args.avatar
    # The preview window is created before anything imports PyAV: with a GUI (Qt) OpenCV,
    # creating the first window after PyAV's libraries are loaded hangs.
    on_frame = preview_callback() if args.preview else None
    try:
        return asyncio.run(main_async(args, avatar, on_frame))
    except (ServerError, MicError, CertificateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:  # a local file that cannot be used (audio, photo)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        print(f"error: {connection_error(args.url, exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
