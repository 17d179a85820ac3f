"""WebRTC transport: ``POST /offer`` (SDP offer → answer), one engine session per peer connection.

The page sends its microphone (opus) plus a recv-only video transceiver and a data channel
(``events``). Per connection (:class:`PeerSession`): a reader task pushes the received audio into
the session, a pump task moves the session's frames to an outgoing video track (25 fps, 90 kHz
pts) and audio track (48 kHz, 20 ms frames). Both tracks wait on one shared :class:`Pacer`, so
a frame and its audio leave together and Chrome lip-syncs them from the RTCP sender reports. The
data channel carries JSON events: ``vad``, ``state``, ``segment_end`` and periodic ``stats``.

ICE: no STUN/TURN unless ``ServerSettings.ice_servers`` says so, and host candidates follow the
interface the server listens on (see :func:`bind_ice_to`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fractions
import json
import logging
import statistics
import time
from collections.abc import Callable

import aioice.ice
import av
import numpy as np
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from engine.frames import AudioFrame, VideoFrame
from engine.scheduler import BufferFull
from engine.session import Session
from mmgt.drivers.controls import MotionControls
from mmgt.errors import AudioError
from server.app import CTX, ServerContext, origin_allowed
from server.avatars import DEFAULT_ID
from server.protocol import event_json, parse_json
from server.rtc_video import tune_aiortc

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_PACKET = AUDIO_RATE // 50  # 20 ms
CONNECT_TIMEOUT_S = 30.0
QUEUE_S = 2.0  # frames kept for a track whose sender is not pulling (oldest dropped)
SKIP_LATE_S = 0.2  # a video frame this late is skipped if a newer one is already waiting
REPEAT_REFRESH_S = 0.5  # a repeated image (degraded frame rate, hold) still goes out this often
RUNNING = {"type": "state", "state": "running", "detail": "connected"}
MAX_CHANNEL_BUFFER = 256 * 1024  # bytes of events waiting on the data channel
_ORIGINAL_HOST_ADDRESSES = aioice.ice.get_host_addresses


def bind_ice_to(host: str) -> None:
    """Make aioice's host candidates follow the listening interface (process-wide patch).

    aioice always drops 127.0.0.1 and offers every other interface. A server on 127.0.0.1 should
    offer only loopback, one on a specific address only that address, one on 0.0.0.0 / :: every
    interface. aioice reads a module function, so this is the one module-level state here; with
    several servers in one process the last one started wins.
    """

    def addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if host in ("127.0.0.1", "localhost"):
            return ["127.0.0.1"] if use_ipv4 else []
        if host == "::1":
            return ["::1"] if use_ipv6 else []
        if host in ("", "0.0.0.0", "::"):
            loopback = ["127.0.0.1"] if use_ipv4 else []
            return _ORIGINAL_HOST_ADDRESSES(use_ipv4, use_ipv6) + loopback
        return [host]

    aioice.ice.get_host_addresses = addresses


class Pacer:
    """One start time shared by the tracks of a connection: pts ``t`` leaves at ``start + t``."""

    def __init__(self) -> None:
        self.start: float | None = None

    def lateness(self, pts: float) -> float:
        """Seconds since ``pts`` was due to leave (0 before the first frame set the start)."""
        if self.start is None:
            return 0.0
        return asyncio.get_running_loop().time() - (self.start + pts)

    async def wait(self, pts: float) -> None:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time() - pts
        delay = self.start + pts - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)


class _QueueTrack(MediaStreamTrack):
    """A track fed by the pump; a full queue drops its oldest item (sender not pulling)."""

    def __init__(self, pacer: Pacer, maxsize: int) -> None:
        super().__init__()
        self.pacer = pacer
        self.queue: asyncio.Queue = asyncio.Queue(maxsize)

    def put(self, item: object) -> None:
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(item)

    def stop(self) -> None:
        super().stop()
        self.put(None)  # wake a pending recv

    async def _next(self) -> object:
        item = await self.queue.get()
        if item is None or self.readyState != "live":
            raise MediaStreamError
        return item


class AvatarVideoTrack(_QueueTrack):
    """Session video frames as ``av.VideoFrame`` (rgb24, pts = index · 3600 at 90 kHz).

    When frames pile up behind a sender that fell behind (the encoder or the loop overloaded),
    a frame more than :data:`SKIP_LATE_S` late is skipped if a newer one is already queued, so
    the picture stays live instead of trailing its sound; audio is never skipped, and the
    browser keeps the two in sync from their timestamps.

    A frame that repeats the image sent before it (the scheduler's half frame rate and hold
    under load) is not handed to the encoder, which costs as much for a repeat as for a new
    image (5–8 ms at 512², VP8 and H.264): the browser keeps showing the image it has, and the
    next new image carries its own timestamp. It still counts as sent at its time, and a held
    image goes out again every :data:`REPEAT_REFRESH_S`, so a lost picture or a keyframe request
    is answered within that."""

    kind = "video"

    def __init__(
        self,
        pacer: Pacer,
        on_sent: Callable[[VideoFrame], None],
        on_skipped: Callable[[VideoFrame], None] = lambda frame: None,
    ) -> None:
        super().__init__(pacer, int(QUEUE_S * 25))
        self.on_sent, self.on_skipped = on_sent, on_skipped
        self._encoded: tuple[np.ndarray, float] | None = None  # last image encoded, its pts
        self.repeats_not_encoded = 0
        self.new_images = 0  # frames sent that showed an image not shown before them

    async def recv(self) -> av.VideoFrame:
        while True:
            frame: VideoFrame = await self._next()
            while self.pacer.lateness(frame.pts) > SKIP_LATE_S and not self.queue.empty():
                self.on_skipped(frame)
                frame = await self._next()
            await self.pacer.wait(frame.pts)
            if not self._repeats_last(frame):
                break
            self.repeats_not_encoded += 1
            self.on_sent(frame)  # shown: the browser holds the image it has
        if self._encoded is None or frame.image is not self._encoded[0]:
            self.new_images += 1  # (a held image's refresh is not new)
        self._encoded = (frame.image, frame.pts)
        out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")  # converted by the encoder
        out.pts = frame.index * (VIDEO_CLOCK // frame.fps)
        out.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.on_sent(frame)  # handed to aiortc's encoder now
        return out

    def _repeats_last(self, frame: VideoFrame) -> bool:
        """The same image as the last one encoded, sent less than the refresh time ago."""
        last = self._encoded
        return (
            last is not None and frame.image is last[0] and frame.pts - last[1] < REPEAT_REFRESH_S
        )


class AvatarAudioTrack(_QueueTrack):
    """Session audio as 20 ms s16 mono ``av.AudioFrame`` at 48 kHz."""

    kind = "audio"

    def __init__(self, pacer: Pacer) -> None:
        super().__init__(pacer, int(QUEUE_S * 50))

    def put_frame(self, frame: AudioFrame) -> None:
        """Split a 40 ms engine frame into 20 ms packets (the output rate is 48 kHz)."""
        pcm = np.clip(frame.samples, -1.0, 1.0) * 32767.0
        pcm = pcm.round().astype(np.int16)
        for start in range(0, len(pcm), AUDIO_PACKET):
            self.put((frame.start_sample + start, pcm[start : start + AUDIO_PACKET]))

    async def recv(self) -> av.AudioFrame:
        start, pcm = await self._next()
        await self.pacer.wait(start / AUDIO_RATE)
        out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        out.sample_rate = AUDIO_RATE
        out.pts = start
        out.time_base = fractions.Fraction(1, AUDIO_RATE)
        return out


def pcm_of(frame: av.AudioFrame) -> tuple[np.ndarray, int, int]:
    """(samples (n, channels), rate, channels) of a decoded frame, whatever its layout."""
    channels = len(frame.layout.channels)
    arr = frame.to_ndarray()
    arr = arr.T if frame.format.is_planar else arr.reshape(-1, channels)
    if arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    elif arr.dtype != np.int16:
        scale = float(np.iinfo(arr.dtype).max)
        arr = (arr / scale).astype(np.float32)
    return np.ascontiguousarray(arr), frame.sample_rate, channels


class OfferError(ValueError):
    """The offer cannot be answered (the message is shown to the client)."""


class PeerSession:
    """Everything one peer connection owns; :meth:`close` releases all of it (idempotent).

    Created once admission is granted: it owns that admission slot, the engine session (opened
    when ICE/DTLS connect, so no frames pile up during the handshake), the tasks and the tracks.
    """

    def __init__(
        self,
        ctx: ServerContext,
        pc: RTCPeerConnection,
        avatar,  # noqa: ANN001
        state,  # noqa: ANN001
        name: str,
        motion: MotionControls | None = None,
    ) -> None:
        self.ctx, self.pc, self.avatar, self.state, self.name = ctx, pc, avatar, state, name
        self.motion = motion or MotionControls()  # the dials the page asked for last
        self.session: Session | None = None
        self.channel = None  # the page's data channel, once it opens
        self.pacer = Pacer()
        self.video = AvatarVideoTrack(self.pacer, self._video_sent, self._video_skipped)
        self.audio = AvatarAudioTrack(self.pacer)
        self.tasks: set[asyncio.Task] = set()
        self.sent_frames = 0
        self.dropped_events = 0  # events not sent to a page that left too much unread
        self._latencies: list[float] = []  # seconds, frames sent since the last stats event
        self.closed = False
        self._closing: asyncio.Task | None = None
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_state)

    # -- signalling -------------------------------------------------------------------------
    async def answer(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        """Apply the offer, attach the avatar tracks, return the local answer."""
        try:
            await self.pc.setRemoteDescription(offer)
        except Exception as exc:  # aiortc raises various types for malformed SDP
            raise OfferError(f"malformed SDP offer: {exc or type(exc).__name__}") from exc
        kinds = {t.kind for t in self.pc.getTransceivers()}
        if "video" not in kinds:
            raise OfferError("the offer has no video m-line (add a recvonly video transceiver)")
        self.pc.addTrack(self.video)
        if "audio" in kinds:
            self.pc.addTrack(self.audio)
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:
            raise OfferError(f"cannot answer the offer: {exc or type(exc).__name__}") from exc
        self.spawn(self._connect_timeout(), "connect-timeout")
        return self.pc.localDescription

    def spawn(self, coro, what: str) -> None:  # noqa: ANN001
        task = self.ctx.spawn(coro, f"{self.name}-{what}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self.spawn(self._read_audio(track), "reader")

    def _on_datachannel(self, channel) -> None:  # noqa: ANN001
        self.channel = channel
        if self.session is not None:  # connected before the channel opened
            self.send(RUNNING)

        @channel.on("message")
        def _message(message: object) -> None:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                msg = parse_json(message)
                if msg.get("type") == "bye":
                    self.close_soon()
                elif msg.get("type") == "motion":
                    self._set_motion({k: v for k, v in msg.items() if k != "type"})

    def _set_motion(self, changes: dict) -> None:
        """The page's motion dials: applied from the next posed frame, echoed back (or an
        error event naming the bad value)."""
        try:
            self.motion = self.motion.updated(changes)
        except ValueError as exc:
            self.send({"type": "error", "code": "bad_motion", "message": str(exc)})
            return
        if self.session is not None:
            with contextlib.suppress(RuntimeError):  # the session is closing
                self.session.set_motion(self.motion)
        self.send({"type": "motion", **self.motion.as_dict()})

    async def _on_state(self) -> None:
        state = self.pc.connectionState
        log.info("%s: connection %s", self.name, state)
        if state == "connected" and self.session is None and not self.closed:
            self._start()
        elif state in ("failed", "closed"):
            self.close_soon()

    async def _connect_timeout(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.session is None:
            log.info("%s: not connected after %.0f s, closing", self.name, CONNECT_TIMEOUT_S)
            self.close_soon()

    # -- streaming --------------------------------------------------------------------------
    def _start(self) -> None:
        stream = dataclasses.replace(self.ctx.settings.stream, output_rate=AUDIO_RATE)
        self.session = self.ctx.engine.open_session(
            self.avatar,
            input_rate=AUDIO_RATE,
            channels=2,  # aiortc's opus decoder gives s16 stereo 48 kHz; others are converted
            settings=stream,
            name=self.name,
            state=self.state,
            motion=self.motion,
        )
        self.send(RUNNING)
        self.spawn(self._pump(), "pump")
        self.spawn(self._stats(), "stats")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        """Push the peer's audio into the session (dropped until the session starts)."""
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if self.session is None or self.closed:
                continue
            try:
                self.session.push_audio(*pcm_of(frame))
            except (BufferFull, AudioError) as exc:
                log.warning("%s: %s", self.name, exc)

    async def _pump(self) -> None:
        """Session frames → tracks, events → data channel; closes the peer when it ends."""
        frame_rate = self.session.scheduler.settings.fps
        try:
            async for item in self.session:
                if isinstance(item, VideoFrame):
                    self.video.put(item)
                elif isinstance(item, AudioFrame):
                    self.audio.put_frame(item)
                else:  # events: the websocket protocol's JSON, on the data channel
                    self.send(event_json(item, frame_rate))
        except Exception:
            log.exception("%s: session failed", self.name)
            self.send({"type": "state", "state": "error", "detail": "session failed"})
        self.close_soon()

    def _video_sent(self, frame: VideoFrame) -> None:
        self.sent_frames += 1
        if self.session is not None and frame.source_time is not None:
            now = self.ctx.engine.clock.now()
            self.session.record_latency(frame, now)  # also feeds the engine's histogram
            self._latencies.append(now - frame.source_time)

    def _video_skipped(self, frame: VideoFrame) -> None:
        if self.session is not None:
            self.session.stats.skipped_frames += 1

    async def _stats(self, period: float = 1.0) -> None:
        """Every ``period``: frames and new images sent per second (fewer images while the
        scheduler holds them under load) and the median latency of those frames."""
        last_frames, last_images, last_time = (
            self.sent_frames,
            self.video.new_images,
            time.monotonic(),
        )
        while True:
            await asyncio.sleep(period)
            now, fresh = time.monotonic(), self._latencies
            self._latencies = []
            images = self.video.new_images
            self.send(
                {
                    "type": "stats",
                    "fps": round((self.sent_frames - last_frames) / (now - last_time), 1),
                    "image_fps": round((images - last_images) / (now - last_time), 1),
                    "latency_ms": round(1000 * statistics.median(fresh)) if fresh else None,
                    "frames": self.sent_frames,
                    "skipped": self.session.stats.skipped_frames,
                    "level": self.session.scheduler.level,
                    "held": self.session.scheduler.counters["held_frames"],
                }
            )
            last_frames, last_images, last_time = self.sent_frames, images, now

    def send(self, event: dict) -> None:
        """Send a JSON event on the page's data channel (dropped if it is not open, or if the
        page has left :data:`MAX_CHANNEL_BUFFER` bytes unread: events are advisory, and a peer
        that floods the channel without reading must not grow the server's memory)."""
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return
        if channel.bufferedAmount > MAX_CHANNEL_BUFFER:
            self.dropped_events += 1
            return
        channel.send(json.dumps(event, separators=(",", ":")))

    # -- closing ----------------------------------------------------------------------------
    def close_soon(self) -> None:
        """Close from a callback or from one of this peer's own tasks."""
        if self._closing is None and not self.closed:
            self._closing = self.ctx.spawn(self.close(), f"{self.name}-close")

    async def close(self) -> None:
        """Close the session and the peer connection, release admission, stop the tasks."""
        if self.closed:
            return
        self.closed = True
        self.ctx.connections.discard(self.close)
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        self.video.stop()
        self.audio.stop()
        try:
            if self.session is not None:
                await self.session.aclose()
            try:
                await self.pc.close()
            except Exception:  # aiortc trips over its own half-negotiated state (bad offers)
                log.warning("%s: closing the peer connection failed", self.name, exc_info=True)
        finally:
            self.ctx.admission.leave()
            log.info("%s: closed (%d frames sent)", self.name, self.sent_frames)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _parse_offer(body: object) -> tuple[RTCSessionDescription, str, MotionControls]:
    if not isinstance(body, dict):
        raise OfferError("the request body must be a JSON object")
    sdp, kind, avatar = body.get("sdp"), body.get("type"), body.get("avatar", DEFAULT_ID)
    if not isinstance(sdp, str) or not sdp.strip():
        raise OfferError("missing 'sdp' (the browser's offer SDP as a string)")
    if not sdp.startswith("v="):
        raise OfferError("malformed SDP offer: it must start with 'v=0'")
    if kind != "offer":
        raise OfferError(f"'type' must be \"offer\", got {kind!r}")
    if not isinstance(avatar, str):
        raise OfferError("'avatar' must be an avatar id string")
    try:
        motion = MotionControls().updated(body.get("motion", {}))
    except ValueError as exc:
        raise OfferError(str(exc)) from None
    return RTCSessionDescription(sdp=_open_candidates(sdp), type=kind), avatar, motion


def _open_candidates(sdp: str) -> str:
    """The offer without ``a=end-of-candidates``, so the ICE agent never stops waiting for
    candidates before :data:`CONNECT_TIMEOUT_S`.

    Browsers hide their host addresses behind mDNS names (``<uuid>.local``) when the page has no
    microphone permission (Firefox even with it). Where this server cannot resolve those names
    (multicast does not reach it: a container, another subnet), an offer that says its
    candidates are complete leaves aioice with no pair, and it fails at once. Without that line
    it waits, learns the browser's address from the browser's own connectivity checks (a
    peer-reflexive candidate, RFC 8445 §7.3.1.3) and connects, as browsers do with each other.
    """
    lines = sdp.splitlines(keepends=True)
    return "".join(line for line in lines if line.strip() != "a=end-of-candidates")


async def offer(request: web.Request) -> web.Response:
    """POST /offer: ``{"sdp", "type": "offer", "avatar", "motion"}`` → the answer
    ``{"sdp", "type"}``."""
    ctx = request.app[CTX]
    errors = ctx.engine.metrics.errors_total
    if not origin_allowed(request, ctx.settings):
        errors.labels("origin").inc()
        return _error(403, "origin not allowed")
    try:
        description, avatar_id, motion = _parse_offer(parse_json(await request.text()))
    except (ValueError, UnicodeDecodeError) as exc:  # OfferError and parse_json's refusals
        errors.labels("offer").inc()
        return _error(400, str(exc) if isinstance(exc, ValueError) else "body is not UTF-8")
    avatar = ctx.avatars.get(avatar_id)
    if avatar is None:
        errors.labels("offer").inc()
        return _error(404, f"unknown avatar {avatar_id!r}")
    if not ctx.admission.enter():
        ctx.engine.metrics.refused_total.inc()
        return _error(503, f"server full ({ctx.admission.limit} sessions)")
    try:
        state = await asyncio.to_thread(ctx.engine.avatar_state, avatar)
    except BaseException:
        ctx.admission.leave()
        raise
    ice = [RTCIceServer(**server) for server in ctx.settings.ice_servers]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=ice))
    peer = PeerSession(ctx, pc, avatar, state, f"webrtc-{id(pc):x}", motion)
    ctx.connections.add(peer.close)
    try:
        answer = await peer.answer(description)
    except OfferError as exc:
        await peer.close()
        errors.labels("offer").inc()
        return _error(400, str(exc))
    except BaseException:
        await peer.close()
        raise
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def _set_up_aiortc(app: web.Application) -> None:
    bind_ice_to(app[CTX].settings.host)
    tune_aiortc()


async def rtc_config(request: web.Request) -> web.Response:
    """GET /rtc-config: the ICE servers the page should use (the server's ``--ice-server``)."""
    return web.json_response({"iceServers": list(request.app[CTX].settings.ice_servers)})


def setup_routes(app: web.Application) -> None:
    """Add ``POST /offer`` and ``GET /rtc-config``; bind ICE host candidates to the server's
    interface and tune aiortc's video encoding (:mod:`server.rtc_video`)."""
    app.router.add_post("/offer", offer)
    app.router.add_get("/rtc-config", rtc_config)
    app.on_startup.append(_set_up_aiortc)
