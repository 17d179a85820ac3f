"""A Python client for the websocket API (protocol 1, docs/protocol.md).

:func:`run_client` uploads a photo if asked, sends a start message, streams PCM16 chunks from an
audio source, and collects what comes back: JPEG frames with their index and the PCM16 audio
that plays with them (``format="jpeg"``), or the pieces of one fragmented MP4 stream
(``format="fmp4"``), and the JSON events. :func:`write_mp4` turns that into a video file.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext, create_default_context
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np

from server.protocol import HEADER, KIND_AUDIO_PCM16, KIND_FMP4, KIND_VIDEO_JPEG

CHUNK_MS = 20


class ServerError(RuntimeError):
    """The server refused the session or reported a fatal error."""


@dataclass
class Received:
    """Everything a session sent back."""

    ready: dict = field(default_factory=dict)
    video: list[tuple[int, bytes, float]] = field(default_factory=list)  # index, jpeg, t recv
    audio: list[tuple[int, int, bytes]] = field(default_factory=list)  # index, sample, pcm16
    events: list[dict] = field(default_factory=list)
    fmp4: bytearray = field(default_factory=bytearray)  # the fragmented MP4 stream, in order
    fmp4_frames: int = 0  # frames in the pieces received

    def audio_samples(self) -> np.ndarray:
        """All audio as float32 mono, placed by its pts (gaps are silence)."""
        if not self.audio:
            return np.zeros(0, np.float32)
        per = len(self.audio[0][2]) // 2
        end = max(s for _, s, _ in self.audio) + per
        out = np.zeros(end, np.float32)
        for _, start, pcm in self.audio:
            chunk = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
            out[start : start + chunk.size] = chunk
        return out

    def errors(self) -> list[dict]:
        return [e for e in self.events if e.get("type") == "error"]


def trusting(cafile: str | Path) -> SSLContext:
    """A client TLS context that trusts the certificates in ``cafile`` (PEM), e.g. a server's
    self-signed one, besides the system's."""
    ctx = create_default_context()
    ctx.load_verify_locations(cafile=str(cafile))  # OSError, SSLError: not a readable PEM file
    return ctx


def http_base(ws_url: str) -> str:
    """ws://host:port/ws → http://host:port"""
    parts = urlsplit(ws_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))


UPLOAD_TRIES = 4  # a busy server (503) is asked again after its Retry-After


async def upload_avatar(http: aiohttp.ClientSession, base: str, photo: Path) -> str:
    """POST a photo to /avatars; returns its avatar id. A server busy preparing other photos
    (503) is asked again after the delay it names (at most 10 s), up to ``UPLOAD_TRIES`` times."""
    data = await asyncio.to_thread(photo.read_bytes)
    attempt = 0
    while True:
        attempt += 1
        async with http.post(f"{base}/avatars", data=data) as resp:
            text = await resp.text()
            try:
                body = json.loads(text)
            except ValueError:  # e.g. aiohttp's own plain-text 413
                body = {"error": text.strip() or resp.reason}
            if resp.status == 200:
                return body["id"]
            if resp.status == 503 and attempt < UPLOAD_TRIES:
                retry = resp.headers.get("Retry-After", "")
                await asyncio.sleep(min(float(retry) if retry.isdigit() else 2.0, 10.0))
                continue
            raise ServerError(f"upload refused ({resp.status}): {body.get('error', body)}")


async def wav_chunks(
    samples: np.ndarray, rate: int, *, realtime: bool, chunk_ms: int = CHUNK_MS
) -> AsyncIterator[bytes]:
    """PCM16 chunks of a mono float signal, paced in real time or as fast as possible."""
    n = rate * chunk_ms // 1000
    pcm = (np.clip(samples, -1, 1) * 32767).round().astype("<i2")
    t0 = time.monotonic()
    for k, i in enumerate(range(0, pcm.size, n)):
        if realtime:
            await asyncio.sleep(max(0.0, t0 + k * chunk_ms / 1000 - time.monotonic()))
        yield pcm[i : i + n].tobytes()


async def run_client(
    url: str,
    source: AsyncIterator[bytes | dict],
    *,
    sample_rate: int,
    channels: int = 1,
    avatar: str | Path | None = None,
    pace: str = "realtime",
    audio_rate: int | None = None,
    on_frame: Callable[[int, bytes], None] | None = None,
    origin: str | None = None,
    video_format: str = "jpeg",
    ssl: SSLContext | bool = True,
    motion: dict[str, float] | None = None,
) -> Received:
    """Stream ``source`` to the server at ``url`` and collect the reply until ``done``.

    ``source`` yields PCM16 chunks and, between them, control messages as dicts (``mark``,
    ``end_segment``); ``finish`` is sent after the last item.

    ``video_format``: ``jpeg`` (frames + PCM) or ``fmp4`` (one fragmented MP4 stream).
    ``ssl`` (``wss://`` servers): True verifies the certificate against the system's CAs, an
    ``SSLContext`` against its own (e.g. :func:`trusting`), False not at all. ``motion``: the
    session's motion dials (``{"head": 0.5, …}``, docs/protocol.md)."""
    received = Received()
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as http:
        avatar_id = "default"
        if isinstance(avatar, Path):
            avatar_id = await upload_avatar(http, http_base(url), avatar)
        elif isinstance(avatar, str):
            avatar_id = avatar
        async with http.ws_connect(url, headers=headers, max_msg_size=0) as ws:
            start = {
                "type": "start",
                "protocol": 1,
                "sample_rate": sample_rate,
                "channels": channels,
                "avatar": avatar_id,
                "format": video_format,
                "pace": pace,
            }
            if audio_rate:
                start["audio_rate"] = audio_rate
            if motion:
                start["motion"] = motion
            await ws.send_str(json.dumps(start))
            first = await ws.receive_json()
            if first.get("type") != "ready":
                raise ServerError(first.get("message", str(first)))
            received.ready = first
            sender = asyncio.create_task(_send(ws, source))
            try:
                await _receive(ws, received, on_frame)
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
    return received


async def _send(ws: aiohttp.ClientWebSocketResponse, source: AsyncIterator[bytes | dict]) -> None:
    async for item in source:
        if isinstance(item, dict):  # a control message, e.g. {"type": "mark", "name": "w3"}
            await ws.send_str(json.dumps(item))
        else:
            await ws.send_bytes(item)
    await ws.send_str(json.dumps({"type": "finish"}))


async def _receive(
    ws: aiohttp.ClientWebSocketResponse,
    received: Received,
    on_frame: Callable[[int, bytes], None] | None,
) -> None:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.BINARY:
            kind, pts, index = HEADER.unpack_from(msg.data)
            payload = msg.data[HEADER.size :]
            if kind == KIND_VIDEO_JPEG:
                received.video.append((index, payload, time.monotonic()))
                if on_frame is not None:
                    on_frame(index, payload)
            elif kind == KIND_AUDIO_PCM16:
                received.audio.append((index, pts, payload))
            elif kind == KIND_FMP4:
                received.fmp4 += payload
                received.fmp4_frames = index + 1
        elif msg.type == aiohttp.WSMsgType.TEXT:
            event = json.loads(msg.data)
            received.events.append(event)
            if event.get("type") == "error" and event.get("fatal"):
                raise ServerError(f"{event['code']}: {event['message']}")
            if event.get("type") == "done":
                return
        else:
            break
    # The connection ended without "done": the server stopped or the network dropped it.
    reason = f"code {ws.close_code}" if ws.close_code is not None else "no close code"
    if ws.close_code == aiohttp.WSCloseCode.GOING_AWAY:
        reason += ": the server is stopping"
    elif isinstance(ws.exception(), Exception):
        reason += f", {ws.exception()}"
    frames = len(received.video) or received.fmp4_frames
    raise ServerError(
        f"the server closed the connection before the end ({reason}) after {frames} frames"
    )


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → (H, W, 3) uint8 RGB."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a JPEG frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_mp4(received: Received, out: str | Path) -> Path:
    """Write the received frames and their audio to an mp4 (atomic: no partial file).

    A fragmented MP4 stream is written as received (it is a playable MP4 file)."""
    from mmgt.video import Mp4Writer

    if received.fmp4:
        path = Path(out)
        tmp = path.with_name(f".{path.name}.part")
        tmp.write_bytes(received.fmp4)
        tmp.replace(path)
        return path
    if not received.video:
        raise ValueError("no video frames were received")
    frames = sorted(received.video, key=lambda v: v[0])
    size = received.ready.get("width", decode_jpeg(frames[0][1]).shape[0])
    first = frames[0][0]
    rate = received.ready.get("audio_rate", 48000)
    per = rate // received.ready.get("fps", 25)
    audio = received.audio_samples()[first * per :]
    with Mp4Writer(out, size, fps=received.ready.get("fps", 25), audio=audio, audio_rate=rate) as w:
        for _, jpeg, _ in frames:
            w.write(decode_jpeg(jpeg))
    return Path(out)
