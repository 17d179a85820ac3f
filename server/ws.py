"""The websocket API (protocol version 1, see docs/protocol.md).

Client → server: a JSON ``start`` message, then PCM16 binary chunks, and JSON control messages
(``end_segment``, ``mark``, ``interrupt``, ``motion``, ``finish``). Server → client: JSON events
and binary frames, each with a 16-byte header (:data:`HEADER`): JPEG video frames with their
index, and the PCM16 audio that plays with each frame (delayed with the video, so they stay in
sync); or, with ``format: fmp4``, one fragmented MP4 stream (H.264 + AAC) in pieces.

Every bad input gets an ``error`` event with a code; only protocol-level abuse (floods, a
consumer that stops reading) closes the connection. The server and other sessions go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace

import numpy as np
from aiohttp import WSCloseCode, WSMsgType, web

from engine.frames import AudioFrame, VideoFrame
from engine.scheduler import BufferFull
from engine.session import MarkLimit
from mmgt.audio.decode import MAX_CHANNELS, MAX_RATE, MIN_RATE
from mmgt.drivers.controls import MotionControls
from mmgt.errors import AudioError, short_repr
from mmgt.video import FragmentedMp4, encode_jpeg
from server.app import CTX, ServerContext, json_dumps, origin_allowed
from server.protocol import (
    HEADER,
    KIND_AUDIO_PCM16,
    KIND_FMP4,
    KIND_VIDEO_JPEG,
    PROTOCOL,
    event_json,
    parse_json,
)

log = logging.getLogger(__name__)

FORMATS = ("jpeg", "fmp4")
FRAGMENT_MS = (40, 2000)  # fmp4 fragment duration range (default: one frame)
PACES = ("realtime", "asap")
MAX_AUDIO_OUT_RATE = 96000  # returned audio (the default follows sample_rate up to this)
MAX_MESSAGES_PER_S = 400  # token bucket: sustained rate …
MAX_MESSAGE_BURST = 2000  # … and burst; beyond that the client is flooding
STATS_EVERY_S = 2.0
PACE_LEAD_S = 0.3  # realtime pace: frames leave at most this far ahead of their play time


class LastJpeg:
    """JPEG encoding off the loop that remembers the last image: a held image (degraded
    quality repeats images) is not encoded again."""

    def __init__(self, quality: int) -> None:
        self.quality = quality
        self._last: tuple[np.ndarray, bytes] | None = None

    async def encode(self, image: np.ndarray) -> bytes:
        if self._last is not None and image is self._last[0]:
            return self._last[1]
        jpeg = await asyncio.to_thread(encode_jpeg, image, self.quality)
        self._last = (image, jpeg)
        return jpeg


class ProtocolError(Exception):
    """A bad message: reported to the client as an ``error`` event with ``code``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _is_int(value: object) -> bool:
    """A JSON integer (not a boolean, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_start(msg: dict, ctx: ServerContext) -> dict:
    """Validate a ``start`` message; returns normalised options or raises ProtocolError."""
    version = msg.get("protocol", PROTOCOL)
    if not _is_int(version) or version != PROTOCOL:
        raise ProtocolError(
            "bad_start", f"protocol {short_repr(version)} is not supported (use {PROTOCOL})"
        )
    rate, channels = msg.get("sample_rate"), msg.get("channels", 1)
    if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
        raise ProtocolError(
            "bad_start",
            f"sample_rate must be an integer in {MIN_RATE}…{MAX_RATE}, got {short_repr(rate)}",
        )
    if not _is_int(channels):
        raise ProtocolError("bad_start", f"channels must be an integer, got {short_repr(channels)}")
    if not 1 <= channels <= MAX_CHANNELS:
        raise ProtocolError("bad_start", f"channels must be 1…{MAX_CHANNELS}, got {channels}")
    fps = ctx.settings.stream.fps
    default_rate = rate if rate % fps == 0 and rate <= MAX_AUDIO_OUT_RATE else 48000
    audio_rate = msg.get("audio_rate", default_rate)
    if not _is_int(audio_rate) or audio_rate % fps or not 8000 <= audio_rate <= MAX_AUDIO_OUT_RATE:
        raise ProtocolError("bad_start", f"audio_rate must be a multiple of {fps} in "
                            f"8000…{MAX_AUDIO_OUT_RATE}, got {short_repr(audio_rate)}")  # fmt: skip
    fmt, pace = msg.get("format", "jpeg"), msg.get("pace", "realtime")
    if fmt not in FORMATS:
        raise ProtocolError("bad_start", f"format must be one of {FORMATS}, got {short_repr(fmt)}")
    if pace not in PACES:
        raise ProtocolError("bad_start", f"pace must be one of {PACES}, got {short_repr(pace)}")
    quality = msg.get("jpeg_quality", 80)
    if not _is_int(quality) or not 1 <= quality <= 100:
        raise ProtocolError("bad_start", f"jpeg_quality must be 1…100, got {short_repr(quality)}")
    fragment_ms = msg.get("fragment_ms", FRAGMENT_MS[0])
    if not _is_int(fragment_ms) or not FRAGMENT_MS[0] <= fragment_ms <= FRAGMENT_MS[1]:
        raise ProtocolError("bad_start", f"fragment_ms must be {FRAGMENT_MS[0]}…{FRAGMENT_MS[1]}, "
                            f"got {short_repr(fragment_ms)}")  # fmt: skip
    audio_out = msg.get("audio_out", True)
    if not isinstance(audio_out, bool):
        raise ProtocolError(
            "bad_start", f"audio_out must be true or false, got {short_repr(audio_out)}"
        )
    try:
        motion = MotionControls().updated(msg.get("motion", {}))
    except ValueError as exc:
        raise ProtocolError("bad_start", str(exc)) from None
    avatar_id = msg.get("avatar", "default")
    avatar = ctx.avatars.get(avatar_id) if isinstance(avatar_id, str) else None
    if avatar is None:
        raise ProtocolError(
            "unknown_avatar", f"unknown avatar {short_repr(avatar_id)} (upload to /avatars)"
        )
    return {
        "rate": rate,
        "channels": channels,
        "audio_rate": audio_rate,
        "format": fmt,
        "pace": pace,
        "quality": quality,
        "fragment_ms": fragment_ms,
        "avatar": avatar,
        "avatar_id": avatar_id,
        "audio_out": audio_out,
        "motion": motion,
    }


class WsConnection:
    """One websocket client: its session, sender task and limits."""

    def __init__(self, ctx: ServerContext, ws: web.WebSocketResponse, name: str) -> None:
        self.ctx = ctx
        self.ws = ws
        self.name = name
        self.session = None
        self.sender: asyncio.Task | None = None
        self.admitted = False
        self.options: dict = {}
        self._tokens = float(MAX_MESSAGE_BURST)
        self._last = time.monotonic()
        self._last_error: dict[str, float] = {}
        self._closer: asyncio.Task | None = None
        self._deadline: asyncio.Task | None = None

    # -- receiving --------------------------------------------------------------------------
    async def run(self) -> None:
        self._deadline = self.ctx.spawn(self._start_deadline(), f"{self.name}-start-deadline")
        try:
            async for msg in self.ws:
                if not self._take_token():
                    await self.error("flood", "too many messages; closing", fatal=True)
                    break
                try:
                    if msg.type == WSMsgType.TEXT:
                        await self.on_text(msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        self.on_audio(msg.data)
                    elif msg.type == WSMsgType.ERROR:
                        break
                except ProtocolError as exc:
                    await self.error(exc.code, str(exc), fatal=exc.code == "server_full")
                    if exc.code == "server_full":
                        break
                if self.ws.closed:
                    break
        finally:
            await self.close()

    async def _start_deadline(self) -> None:
        """Close a connection that opens no session in time: each idle socket holds a file
        descriptor and buffers, and without a deadline a client could hold any number."""
        limit = self.ctx.settings.start_timeout_s
        await asyncio.sleep(limit)
        if not self.admitted and not self.ws.closed:
            await self.error("start_timeout", f"no session started within {limit:g} s; closing",
                             fatal=True)  # fmt: skip
            await self.close()

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            MAX_MESSAGE_BURST, self._tokens + (now - self._last) * MAX_MESSAGES_PER_S
        )
        self._last = now
        self._tokens -= 1
        return self._tokens >= 0

    async def on_text(self, text: str) -> None:
        try:
            msg = parse_json(text)
        except ValueError as exc:
            raise ProtocolError("bad_json", str(exc)) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            raise ProtocolError("bad_message", 'messages are JSON objects with a "type"')
        kind = msg["type"]
        if kind == "start":
            await self.start(msg)
        elif self.session is None:
            raise ProtocolError("not_started", f"send a start message before {short_repr(kind)}")
        else:
            await self.control(kind, msg)

    async def control(self, kind: str, msg: dict) -> None:
        """A control message of a started session; refusals become non-fatal errors (e.g.
        ``end_segment`` after ``finish``: the session goes on to its end)."""
        try:
            if kind == "end_segment":
                self.session.end_segment()
            elif kind == "mark":
                self.session.mark(msg.get("name"))
            elif kind == "interrupt":
                await self.session.interrupt()
            elif kind == "finish":
                self.session.finish()
            elif kind == "motion":
                changes = {k: v for k, v in msg.items() if k != "type"}
                motion = self.session.motion.updated(changes)
                self.session.set_motion(motion)
                await self.send_json({"type": "motion", **motion.as_dict()})
            else:
                raise ProtocolError("bad_message", f"unknown message type {short_repr(kind)}")
        except MarkLimit as exc:
            raise ProtocolError("mark_limit", f"mark not added: {exc}") from None
        except (ValueError, RuntimeError) as exc:
            raise ProtocolError("bad_message", f"{kind}: {exc}") from None

    def on_audio(self, data: bytes) -> None:
        if self.session is None:
            raise ProtocolError("not_started", "send a start message before audio")
        try:
            self.session.push_audio(data)
        except BufferFull as exc:
            raise ProtocolError("buffer_full", str(exc)) from None
        except (AudioError, RuntimeError) as exc:
            raise ProtocolError("bad_audio", str(exc)) from None

    async def start(self, msg: dict) -> None:
        if self.session is not None:
            raise ProtocolError("bad_start", "this connection already has a session")
        opts = parse_start(msg, self.ctx)
        if not self.ctx.admission.enter():
            self.ctx.engine.metrics.refused_total.inc()
            raise ProtocolError(
                "server_full", f"server full ({self.ctx.admission.limit} sessions); try later"
            )
        self.admitted = True
        self.options = opts
        engine = self.ctx.engine
        settings = replace(
            self.ctx.settings.stream,
            output_rate=opts["audio_rate"],
            realtime=opts["pace"] == "realtime",
        )
        state = await asyncio.to_thread(engine.avatar_state, opts["avatar"])
        self.session = engine.open_session(
            opts["avatar"],
            input_rate=opts["rate"],
            channels=opts["channels"],
            settings=settings,
            idle=opts["pace"] == "realtime",
            name=self.name,
            state=state,
            motion=opts["motion"],
        )
        size = opts["avatar"].frame_size
        await self.send_json(
            {
                "type": "ready",
                "protocol": PROTOCOL,
                "session": self.name,
                "fps": settings.fps,
                "width": size,
                "height": size,
                "audio_rate": opts["audio_rate"],
                "audio_channels": 1,
                "driver": engine.driver_name,
                "avatar": opts["avatar_id"],
                "motion": opts["motion"].as_dict(),
            }
        )
        self.sender = self.ctx.spawn(self.send_loop(), f"{self.name}-send")

    # -- sending ------------------------------------------------------------------------------
    async def send_loop(self) -> None:
        session, opts = self.session, self.options
        fps = session.scheduler.settings.fps
        last_stats = time.monotonic()
        frames = 0
        stream = None
        if opts["format"] == "fmp4":
            size = opts["avatar"].frame_size
            rate = opts["audio_rate"] if opts["audio_out"] else None
            muxer = FragmentedMp4(size, fps=fps, audio_rate=rate,
                                  fragment_s=opts["fragment_ms"] / 1000)  # fmt: skip
            stream = _Fmp4Sender(self, muxer)
        jpegs = LastJpeg(opts["quality"])
        try:
            async for item in session:
                if isinstance(item, VideoFrame):
                    jpeg = None
                    if stream is None:
                        jpeg = await jpegs.encode(item.image)
                    if opts["pace"] == "realtime":
                        await session.wait_until_due(item.index, PACE_LEAD_S)
                    if stream is not None:
                        await stream.video(item, with_audio=opts["audio_out"])
                    else:
                        session.record_latency(item)
                        await self.send_bytes(
                            HEADER.pack(KIND_VIDEO_JPEG, item.index, item.index) + jpeg
                        )
                    frames += 1
                elif isinstance(item, AudioFrame):
                    if stream is not None:
                        await stream.audio(item)
                    elif opts["audio_out"]:
                        head = HEADER.pack(KIND_AUDIO_PCM16, item.start_sample, item.index)
                        await self.send_bytes(head + item.pcm16())
                else:
                    await self.send_json(event_json(item, fps))
                if time.monotonic() - last_stats >= STATS_EVERY_S:
                    last_stats = time.monotonic()
                    await self.send_json(_stats(session))
            if stream is not None:
                await stream.close()
            await self.send_json({**_stats(session), "type": "done", "frames": frames})
            await self.ws.close()
        except (TimeoutError, ConnectionResetError) as exc:
            log.info("%s: client gone or not reading (%s)", self.name, type(exc).__name__)
            with contextlib.suppress(Exception):
                await self.ws.close(code=1008, message=b"slow consumer")
        except RuntimeError as exc:  # the session failed
            await self.error("internal", f"session failed: {exc}", fatal=True)
            await self.ws.close(code=1011)
        except Exception as exc:  # a bug: say so and close, never leave the client waiting
            log.exception("%s: sending failed", self.name)
            with contextlib.suppress(Exception):
                await self.error("internal", f"sending failed: {exc}", fatal=True)
                await self.ws.close(code=1011)

    async def send_bytes(self, data: bytes) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that lands as
        # the send completes, and a sender that survives close() keeps streaming after it.
        async with asyncio.timeout(self.ctx.settings.send_timeout_s):
            await self.ws.send_bytes(data)

    async def send_json(self, obj: dict) -> None:
        if not self.ws.closed:
            text = json_dumps(obj)
            async with asyncio.timeout(self.ctx.settings.send_timeout_s):
                await self.ws.send_str(text)

    async def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        """Send an error event (per-chunk audio errors at most every 0.5 s: a flood of bad
        chunks must not become a flood of replies)."""
        self.ctx.engine.metrics.errors_total.labels(code).inc()
        now = time.monotonic()
        throttled = code in ("buffer_full", "bad_audio", "mark_limit") and not fatal
        if throttled and now - self._last_error.get(code, -1.0) < 0.5:
            return
        self._last_error[code] = now
        with contextlib.suppress(Exception):
            await self.send_json(
                {"type": "error", "code": code, "message": message, "fatal": fatal}
            )

    async def close(self) -> None:
        """Release everything this connection holds. Idempotent, and completes even if the
        caller is cancelled (aiohttp cancels handlers of clients that vanish)."""
        if self._closer is None:
            self._closer = self.ctx.spawn(self._release(), f"{self.name}-close")
        await asyncio.shield(self._closer)

    async def _release(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()  # (if it is what closes, it waits behind a shield)
        if self.sender is not None:
            self.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.sender
            self.sender = None
        try:
            if self.session is not None:
                await self.session.aclose()
                self.session = None
        finally:
            if self.admitted:
                self.ctx.admission.leave()
                self.admitted = False
        if not self.ws.closed:
            with contextlib.suppress(Exception):
                if self.ctx.stopping:
                    await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server stopping")
                else:
                    await self.ws.close()


class _Fmp4Sender:
    """``format: fmp4``: each video frame is muxed with the audio that follows it; bytes go out
    as the muxer finishes them (the init segment, then fragments), and a frame's latency is
    recorded when the fragment holding it is handed over."""

    def __init__(self, conn: WsConnection, muxer: FragmentedMp4) -> None:
        self.conn, self.muxer = conn, muxer
        self.pending: VideoFrame | None = None  # waits for its audio
        self.unsent: list[VideoFrame] = []  # muxed, in no fragment sent yet
        self.last_index = -1  # the last frame in a piece already sent

    async def video(self, frame: VideoFrame, *, with_audio: bool) -> None:
        if self.pending is not None:  # its audio never came: mux it silent
            await self._mux(self.pending, None)
        self.pending = frame if with_audio else None
        if not with_audio:
            await self._mux(frame, None)

    async def audio(self, frame: AudioFrame) -> None:
        if self.pending is not None and self.pending.index == frame.index:
            video, self.pending = self.pending, None
            await self._mux(video, frame.samples)

    async def close(self) -> None:
        if self.pending is not None:
            await self._mux(self.pending, None)
            self.pending = None
        await self._send(await asyncio.to_thread(self.muxer.close))

    async def _mux(self, frame: VideoFrame, samples: np.ndarray | None) -> None:
        self.unsent.append(frame)
        await self._send(await asyncio.to_thread(self.muxer.encode, frame.image, samples))

    async def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.unsent:
            first, self.last_index = self.unsent[0].index, self.unsent[-1].index
        else:  # the file's tail after the last frame
            first = self.last_index
        await self.conn.send_bytes(HEADER.pack(KIND_FMP4, first, self.last_index) + data)
        for frame in self.unsent:
            self.conn.session.record_latency(frame)
        self.unsent.clear()


def _stats(session) -> dict:  # noqa: ANN001
    lat = np.asarray(session.stats.latencies, dtype=np.float64)
    sched = session.scheduler
    out = {"type": "stats", "frames": session.stats.frames_out, "level": sched.level,
           "held": sched.counters["held_frames"]}  # fmt: skip
    if lat.size:
        out["latency_p50_ms"] = round(float(np.percentile(lat, 50)) * 1000, 1)
        out["latency_p95_ms"] = round(float(np.percentile(lat, 95)) * 1000, 1)
    return out


async def handle(request: web.Request) -> web.StreamResponse:
    """GET /ws: check the Origin, upgrade, and serve one connection."""
    ctx = request.app[CTX]
    if not origin_allowed(request, ctx.settings):
        ctx.engine.metrics.errors_total.labels("origin").inc()
        raise web.HTTPForbidden(text="origin not allowed")
    ws = web.WebSocketResponse(max_msg_size=ctx.settings.max_message_bytes, heartbeat=30)
    await ws.prepare(request)
    conn = WsConnection(ctx, ws, f"ws-{id(ws):x}")
    ctx.connections.add(conn.close)
    try:
        await conn.run()
    finally:
        ctx.connections.discard(conn.close)
    return ws
