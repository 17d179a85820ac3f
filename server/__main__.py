"""python -m server: the live avatar server (browser page, WebRTC, websocket API).

python -m server                       # http://127.0.0.1:8080/
python -m server --host 0.0.0.0 --cert cert.pem --key key.pem   # https for remote browsers
python -m server --smoke               # one scripted session end to end, then exit
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from dataclasses import replace

import numpy as np
from aiohttp import web

from engine.scheduler import StreamSettings
from mmgt.backend import add_backend_arguments, backend_from_args
from mmgt.errors import InputError
from mmgt.keypoints.dwpose import POSE_MODELS, choose_dwpose
from mmgt.renderers import add_diffusion_arguments, diffusion_options
from mmgt.types import check_frame_size
from server.avatars import check_public_name
from server.settings import ServerSettings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--cert", help="TLS certificate (PEM) to serve https")
    p.add_argument("--key", help="TLS private key (PEM)")
    p.add_argument("--max-sessions", type=int, default=4, help="sessions admitted at once")
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN URL for WebRTC (repeatable; none by default)",
    )
    p.add_argument("--ice-username", help="username for the TURN servers")
    p.add_argument("--ice-credential", help="credential for the TURN servers")
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="extra browser Origin allowed to use the websocket and uploads",
    )
    p.add_argument(
        "--avatar",
        action="append",
        default=[],
        metavar="NAME=PHOTO",
        help="offer PHOTO (or a folder made by mmgt prepare-avatar) as avatar NAME to every "
        "client, besides the bundled one (repeatable)",
    )
    p.add_argument("--driver", default="auto", choices=("auto", "procedural", "smga"))
    p.add_argument("--smga-weights", help="SMGA weights (our safetensors or an official .pt)")
    p.add_argument("--steps", type=int, help="SMGA DDIM steps per window (live default 1)")
    p.add_argument(
        "--no-speech-gate",
        action="store_true",
        help="feed the SMGA model noise as it is (the gate makes noise without speech silence)",
    )
    add_backend_arguments(p)
    p.add_argument("--renderer", default="warp", choices=("warp", "diffusion"))
    p.add_argument(
        "--weights-dir", help="official weights folder for --renderer diffusion (docs/weights.md)"
    )
    p.add_argument(
        "--pose-model",
        choices=POSE_MODELS,
        default="auto",
        help="reference-pose keypoints: MediaPipe, or the official DWPose from --weights-dir "
        "(auto: DWPose with --renderer diffusion when WEIGHTS/DWPose/ holds it)",
    )
    add_diffusion_arguments(p, live=True)
    p.add_argument("--size", type=int, default=512, help="video side in pixels")
    p.add_argument("--hop", type=int, default=4, help="new frames per stage-1 window")
    p.add_argument("--lookahead", type=int, default=0, help="future frames each window sees")
    p.add_argument("--workers", type=int, help="worker threads (default: cores)")
    p.add_argument("--smoke", action="store_true", help="run one scripted session and exit")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The settings the command line asks for (:class:`InputError` naming a bad one)."""
    if bool(args.cert) != bool(args.key):
        raise InputError("--cert and --key go together")
    check_frame_size(args.size, flag="--size")
    workers = 1 if args.workers is None else args.workers
    minimum = {"--max-sessions": (args.max_sessions, 1), "--hop": (args.hop, 1),
               "--lookahead": (args.lookahead, 0), "--workers": (workers, 1)}  # fmt: skip
    for flag, (value, least) in minimum.items():
        if value < least:
            raise InputError(f"{flag} must be at least {least}, got {value}")
    ice = tuple(
        {
            "urls": url,
            **({"username": args.ice_username} if args.ice_username else {}),
            **({"credential": args.ice_credential} if args.ice_credential else {}),
        }
        for url in args.ice_server
    )
    options = {}
    if args.smga_weights:
        options["weights"] = args.smga_weights
    if args.steps is not None:
        options["steps"] = args.steps
    if args.no_speech_gate:
        options["speech_gate"] = False
    from mmgt.drivers import default_driver_name

    driver = default_driver_name() if args.driver == "auto" else args.driver
    backend = backend_from_args(args, driver=driver, renderer=args.renderer)
    if driver == "smga":
        options["backend"] = backend
    renderer_options = {}
    if args.renderer == "diffusion":
        renderer_options = diffusion_options(args, live=True) | {"backend": backend}
    official = args.weights_dir is not None and args.renderer == "diffusion"
    dwpose = choose_dwpose(args.pose_model, args.weights_dir, official_models=official)
    avatars = []
    for item in args.avatar:
        name, sep, photo = item.partition("=")
        try:
            if not sep or not photo:
                raise ValueError(f"--avatar takes NAME=PHOTO, got {item!r}")
            check_public_name(name)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        if any(name == known for known, _ in avatars):
            raise InputError(f"--avatar {name} is given twice")
        avatars.append((name, photo))
    return ServerSettings(
        avatars=tuple(avatars),
        host=args.host,
        port=0 if args.smoke else args.port,
        cert=args.cert,
        key=args.key,
        max_sessions=args.max_sessions,
        ice_servers=ice,
        allowed_origins=tuple(args.allow_origin),
        frame_size=args.size,
        driver=args.driver,
        driver_options=options,
        renderer=args.renderer,
        renderer_options=renderer_options,
        dwpose_dir=str(dwpose) if dwpose is not None else None,
        stream=StreamSettings(hop_frames=args.hop, lookahead_frames=args.lookahead),
        workers=args.workers,
    )


SMOKE_WEBRTC_S = 5.0  # length of the smoke check's WebRTC session


class ListenError(Exception):
    """The server cannot listen on its address (in use, not this machine's, no permission)."""


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The https context of ``--cert``/``--key`` (None for http); unreadable or mismatched
    files are an :class:`InputError` naming them."""
    if not settings.cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(settings.cert, settings.key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(
            f"cannot use --cert {settings.cert} --key {settings.key}: "
            f"{exc.strerror or getattr(exc, 'reason', None) or exc} (PEM files of a certificate "
            "and its key)"
        ) from exc
    return ctx


async def serve(settings: ServerSettings, *, smoke: bool) -> int:
    """Run the server until interrupted (or, with ``smoke``, for one scripted session)."""
    from server.app import make_app

    ssl_ctx = tls_context(settings)  # before the models load: a bad file fails at once
    app = make_app(settings)
    runner = web.AppRunner(app, handle_signals=False)  # SIGINT/SIGTERM: see _until_signalled
    try:
        await runner.setup()  # start-up: models, the bundled and the operator's avatars
    except BaseException:
        await runner.cleanup()  # the engine's and the avatar store's threads
        raise
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=ssl_ctx)
    try:
        await site.start()
    except BaseException as exc:
        await runner.cleanup()
        if isinstance(exc, OSError):
            raise ListenError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc
        raise
    port = runner.addresses[0][1]
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"{settings.scheme}://{host}:{port}/"
    try:
        if smoke:
            return await smoke_session(replace(settings, port=port), url)
        print(f"Avatar server ready: open {url} in a browser (Ctrl+C to stop)", flush=True)
        for line in remote_hints(settings, port):
            print(line, flush=True)
        name = await _until_signalled()
        print(f"server: {name}: closing sessions and stopping", flush=True)
        return 0
    finally:
        await runner.cleanup()


def remote_hints(settings: ServerSettings, port: int) -> list[str]:
    """For a server other machines can reach: the addresses to open, and the https a remote
    browser needs before it lets a page use the microphone."""
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        return []
    hosts = [settings.host]
    if settings.host in ("0.0.0.0", "::"):
        import ifaddr  # aioice's dependency: the interfaces ICE offers too

        hosts = [ip.ip for a in ifaddr.get_adapters() for ip in a.ips
                 if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]  # fmt: skip
    lines = [f"  from other machines: {settings.scheme}://{h}:{port}/" for h in hosts]
    if not settings.cert:
        lines.append("  note: browsers allow the microphone only on https or localhost; "
                     "pass --cert and --key for other machines")  # fmt: skip
    return lines


async def _until_signalled() -> str:
    """Wait for SIGINT or SIGTERM (Ctrl+C, ``kill``, systemd, Docker) and return its name, so
    a stop requested by a signal shuts down cleanly and exits 0."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[str] = loop.create_future()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, lambda s=sig: got.done() or got.set_result(s.name))
    try:
        return await got
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def smoke_session(settings: ServerSettings, url: str) -> int:
    """Speak the bundled sample through the websocket API and print the figures."""
    from clients.ws.client import run_client, wav_chunks
    from mmgt.audio import load_audio_native
    from mmgt.avatar import BUNDLED_AVATAR

    samples, rate = load_audio_native(BUNDLED_AVATAR.with_name("speech_sample.wav"))
    samples = samples[: rate * 6]
    ws_url = url.replace("http", "ws", 1) + "ws"
    t0 = time.monotonic()
    got = await run_client(  # its own server: a self-signed --cert is fine
        ws_url, wav_chunks(samples, rate, realtime=True), sample_rate=rate, ssl=not settings.cert
    )
    wall = time.monotonic() - t0
    done = next(e for e in got.events if e.get("type") == "done")
    frames = len(got.video)
    span = got.video[-1][2] - got.video[0][2] if frames > 1 else 0.0
    print(f"smoke: driver {got.ready['driver']}, {got.ready['width']}×{got.ready['height']}")
    print(f"smoke: {frames} frames for {len(samples) / rate:.2f} s of speech in {wall:.2f} s")
    if span:
        print(f"smoke: received at {(frames - 1) / span:.1f} fps")
    if "latency_p50_ms" in done:
        print(f"smoke: latency p50 {done['latency_p50_ms']} ms, p95 {done['latency_p95_ms']} ms")
    errors = got.errors()
    for e in errors:
        print(f"smoke: error {e['code']}: {e['message']}", file=sys.stderr)
    ok = frames >= int(len(samples) / rate * 25) - 2 and not errors
    ok = await smoke_webrtc(settings, url, samples, rate) and ok
    print("smoke: OK" if ok else "smoke: FAILED")
    return 0 if ok else 1


async def smoke_webrtc(settings: ServerSettings, url: str, samples: np.ndarray, rate: int) -> bool:
    """The browser's path, with aiortc as the browser: ICE, DTLS-SRTP, Opus both ways and the
    video codec. Passes when video at the session's size and the voice come back."""
    from clients import rtc

    seconds = SMOKE_WEBRTC_S
    try:
        got = await rtc.speak(url, samples, rate, seconds, ssl=not settings.cert)
    except (RuntimeError, OSError) as exc:
        print(f"smoke: WebRTC: error: {exc}", file=sys.stderr)
        return False
    size = (settings.frame_size, settings.frame_size, 3)
    print(f"smoke: WebRTC: {len(got.shapes)} frames in {seconds:g} s, voice back at "
          f"{20 * np.log10(max(got.audio_rms, 1e-9)):.0f} dBFS")  # fmt: skip
    # Setting up the connection takes part of the time; half the frames is plenty.
    return (
        len(got.shapes) >= seconds * 25 / 2 and set(got.shapes) == {size} and got.audio_rms > 0.003
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = settings_from(args)
        return asyncio.run(serve(settings, smoke=args.smoke))
    except KeyboardInterrupt:
        return 0
    except InputError as exc:  # e.g. weights that cannot be loaded, sampler settings out of range
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
