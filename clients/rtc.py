"""A Python WebRTC client of the server, as the browser page is one: speech goes out as a live
microphone track, the avatar's video and voice come back, events arrive on a data channel.

``python -m server --smoke`` uses it to check the WebRTC path of an install (ICE, DTLS-SRTP,
Opus and the video codec) without a browser; the tests use it as a scriptable peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
from collections.abc import Callable
from ssl import SSLContext

import aiohttp
import av
import numpy as np
import soxr
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

RATE = 48000  # WebRTC audio (Opus) runs at 48 kHz
FRAME = RATE // 50  # 20 ms


class SpeechTrack(MediaStreamTrack):
    """Mono speech as a live microphone: 20 ms s16 frames at 48 kHz, paced in real time from
    the first ``recv``; after the speech, silence (or the speech again, with ``loop``)."""

    kind = "audio"

    def __init__(self, samples: np.ndarray, rate: int, *, loop: bool = False) -> None:
        super().__init__()
        pcm = (
            soxr.resample(np.asarray(samples, np.float32), rate, RATE) if rate != RATE else samples
        )
        self.pcm = (np.clip(pcm, -1, 1) * 32767).astype(np.int16)  # (n,) at RATE
        self.loop = loop
        self.pos = 0  # samples sent
        self.start: float | None = None  # loop time of the first recv

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self.start is None:
            self.start = loop.time()
        await asyncio.sleep(max(0.0, self.start + self.pos / RATE - loop.time()))
        index = np.arange(self.pos, self.pos + FRAME)
        if self.loop:
            chunk = np.take(self.pcm, index, mode="wrap")
        else:
            chunk = np.zeros(FRAME, np.int16)
            have = self.pcm[self.pos : self.pos + FRAME]
            chunk[: have.size] = have
        frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self.pos
        frame.time_base = fractions.Fraction(1, RATE)
        self.pos += FRAME
        return frame


class Received:
    """What came back: video frame shapes, audio sample count and energy, data-channel events."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.audio_samples = 0
        self.audio_sq = 0.0
        self.events: list[dict] = []
        self.channel = None  # the events data channel (to send on)

    async def consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    self.shapes.append(frame.to_ndarray(format="rgb24").shape)
                else:
                    pcm = frame.to_ndarray().astype(np.float64) / 32768
                    self.audio_samples += frame.samples
                    self.audio_sq += float((pcm**2).sum()) / len(frame.layout.channels)

    @property
    def audio_rms(self) -> float:
        return (self.audio_sq / max(1, self.audio_samples)) ** 0.5


async def connect(
    http: aiohttp.ClientSession,
    base: str,
    received: Received,
    microphone: MediaStreamTrack,
    *,
    edit_sdp: Callable[[str], str] | None = None,
    **offer: object,
) -> tuple[RTCPeerConnection, list[asyncio.Task], int, dict]:
    """Offer ``microphone`` + a receive-only video + an events channel to the server at
    ``base`` (``offer`` adds fields such as ``avatar`` or ``motion``; ``edit_sdp`` rewrites
    the offer's SDP before it is sent, to imitate other clients); returns the peer connection,
    the tasks consuming its tracks into ``received``, the HTTP status and the answer (or the
    refusal)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task] = []
    pc.on("track", lambda t: tasks.append(asyncio.ensure_future(received.consume(t))))
    pc.addTrack(microphone)
    pc.addTransceiver("video", direction="recvonly")
    channel = received.channel = pc.createDataChannel("events")
    channel.on("message", lambda m: received.events.append(json.loads(m)))
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    body = {"sdp": edit_sdp(sdp) if edit_sdp else sdp, "type": "offer", "avatar": "default"}
    body.update(offer)
    async with http.post(f"{base.rstrip('/')}/offer", json=body) as resp:
        answer = await resp.json()
        if resp.status == 200:
            await pc.setRemoteDescription(RTCSessionDescription(**answer))
        return pc, tasks, resp.status, answer


async def speak(
    base: str,
    samples: np.ndarray,
    rate: int,
    seconds: float,
    *,
    ssl: SSLContext | bool = True,
    received: Received | None = None,
    loop: bool = False,
    **offer: object,
) -> Received:
    """One session: speak ``samples`` into the server at ``base`` for ``seconds`` (silence
    after the speech, or the speech again with ``loop``), then hang up; returns what came back
    (into ``received``, e.g. a subclass recording more). Raises ``RuntimeError`` with the
    server's message if the offer is refused."""
    received = Received() if received is None else received
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl)) as http:
        pc, tasks, status, answer = await connect(
            http, base, received, SpeechTrack(samples, rate, loop=loop), **offer
        )
        try:
            if status != 200:
                raise RuntimeError(f"offer refused ({status}): {answer.get('error', answer)}")
            await asyncio.sleep(seconds)
        finally:
            await pc.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return received
