"""Seeded fuzzing of the websocket API and of POST /offer: random, malformed and abusive
message sequences from several clients at once. The server must answer with error events or
4xx codes, never fail internally, and release every session afterwards. Valid messages in
random orders must keep every frame with its own audio.

(Fuzzing like this found a session whose close was lost and that held its admission slot
forever, and JSON booleans accepted as numbers.)
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random

import aiohttp
import av
import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from mmgt.video import AAC_PRIMING
from server.app import CTX, make_app
from server.protocol import HEADER, KIND_FMP4, KIND_VIDEO_JPEG
from server.settings import ServerSettings
from tests.test_webrtc import browserlike_offer

pytestmark = pytest.mark.asyncio(loop_scope="module")
START_FIELDS = ("protocol", "sample_rate", "channels", "avatar", "format", "fragment_ms", "pace",
                "audio_rate", "audio_out", "jpeg_quality", "motion", "extra")  # fmt: skip


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client():
    settings = ServerSettings(driver="procedural", frame_size=128, max_sessions=3)
    async with TestClient(TestServer(make_app(settings))) as c:
        yield c


def odd_value(rng: random.Random, depth: int = 0) -> object:
    choices = [
        lambda: rng.randint(-(10**12), 10**12),
        lambda: rng.uniform(-1e6, 1e6),
        lambda: rng.choice([float("nan"), float("inf")]),
        lambda: None,
        lambda: rng.choice([True, False]),
        lambda: "x" * rng.randint(0, 40),
        lambda: "é☃\u0000",
        lambda: rng.choice([8000, 16000, 44100, 48000, 192000, 0, -1, 7999, 40, 1]),
        lambda: [odd_value(rng, depth + 1)] if depth < 2 else 1,
        lambda: {"a": odd_value(rng, depth + 1)} if depth < 2 else 2,
    ]
    return rng.choice(choices)()


def random_message(rng: random.Random) -> str | bytes:
    r = rng.random()
    if r < 0.35:
        msg = {"type": "start", "protocol": 1, "sample_rate": 16000, "channels": 1}
        for key in rng.sample(START_FIELDS, rng.randint(0, 4)):
            msg[key] = odd_value(rng)
        return json.dumps(msg)
    if r < 0.5:
        return rng.choice(["{", "[]", "null", "1", '"x"', '{"type": 5}', '{"type": "dance"}',
                           '{"type": "end_segment"}', '{"type": "interrupt"}',
                           '{"type": "finish"}', '{"type": "motion", "head": 0.5}',
                           '{"type": "motion", "mouth": 9}'])  # fmt: skip
    n = rng.choice([0, 1, 3, 640, 641, 6400, 64000])
    return rng.randbytes(n)


async def fuzz_connection(client: TestClient, rng: random.Random) -> list[str]:
    """One client: a few random messages, reading replies in between; returns the events."""
    events: list[str] = []
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        for _ in range(rng.randint(1, 10)):
            msg = random_message(rng)
            await (ws.send_str(msg) if isinstance(msg, str) else ws.send_bytes(msg))
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() * 0.2)
            while True:
                try:
                    reply = await ws.receive(timeout=0.02)
                except TimeoutError:
                    break
                if reply.type == aiohttp.WSMsgType.TEXT:
                    event = json.loads(reply.data)
                    events.append(event["type"] if event["type"] != "error" else event["code"])
                elif reply.type != aiohttp.WSMsgType.BINARY:
                    return events
        if rng.random() < 0.5:
            await ws.close()
    return events


async def released(client: TestClient) -> bool:
    ctx = client.app[CTX]
    for _ in range(100):
        if ctx.admission.active == 0 and not ctx.engine.sessions:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_websocket_fuzz(client, caplog):
    rng = random.Random(7)
    caplog.set_level(logging.ERROR)
    seen: dict[str, int] = {}
    for batch in range(25):
        clients = [random.Random(rng.random()) for _ in range(rng.randint(1, 3))]
        for events in await asyncio.gather(*(fuzz_connection(client, r) for r in clients)):
            for e in events:
                seen[e] = seen.get(e, 0) + 1
        assert await released(client), f"a session was not released after batch {batch}"
    assert "internal" not in seen, seen
    assert seen.get("ready", 0) > 5 and seen.get("bad_start", 0) > 5, seen  # both paths ran
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    async with client.get("/health") as resp:
        assert resp.status == 200 and (await resp.json())["sessions"] == 0


async def test_offer_fuzz(client):
    """Mutated browser offers: 400 or an answer, never 5xx; unconnected peers are released."""
    rng = random.Random(3)
    lines = (await browserlike_offer()).split("\r\n")
    replacements = ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=rtpmap:96 VP8/90000", "a=mid:0",
                    "a=fingerprint:sha-256 00", "a=ice-ufrag:x", "a=setup:actpass", "a=recvonly",
                    "a=sctp-port:abc", "c=IN IP4 999.1.1.1"]  # fmt: skip
    statuses: dict[int, int] = {}
    for _ in range(40):
        sdp = list(lines)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(sdp))
            op = rng.random()
            if op < 0.4:
                del sdp[i]
            elif op < 0.7:
                j = rng.randrange(len(sdp[i]) + 1)
                sdp[i] = sdp[i][:j] + rng.choice(["", "x", ":", "-1", "é"]) + sdp[i][j + 2 :]
            else:
                sdp[i] = rng.choice(replacements)
        body = {"sdp": "\r\n".join(sdp), "type": "offer"}
        async with client.post("/offer", json=body) as resp:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status in (200, 400, 503), (resp.status, await resp.text())
            if resp.status == 200:  # an answer we will never connect to: free the slot
                ctx = client.app[CTX]
                for close in list(ctx.connections):
                    await close()
    assert statuses.get(400, 0) > 5, statuses
    assert await released(client)


async def random_valid_session(
    client: TestClient, rng: random.Random, pace: str, fmt: str = "jpeg"
) -> list:
    """Valid messages in a random order (audio of random length, marks, segment ends,
    interrupts, pauses), then ``finish``; returns what came back, in order: ("v", index),
    ("a", index), ("f", fMP4 bytes) and ("e", event)."""
    got: list = []
    rate = rng.choice([8000, 16000, 44100, 48000])
    start = {"type": "start", "sample_rate": rate, "pace": pace, "format": fmt}
    if fmt == "fmp4":
        start["fragment_ms"] = rng.choice([40, 200, 1000])
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        await ws.send_str(json.dumps(start))
        assert json.loads((await ws.receive(timeout=30)).data)["type"] == "ready"

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    kind, _, index = HEADER.unpack_from(msg.data)
                    if kind == KIND_FMP4:
                        got.append(("f", msg.data[HEADER.size :]))
                    else:
                        got.append(("v" if kind == KIND_VIDEO_JPEG else "a", index))
                else:
                    got.append(("e", json.loads(msg.data)))
                    if got[-1][1]["type"] == "done":
                        return

        reader = asyncio.create_task(read())
        for _ in range(rng.randint(5, 25)):
            op = rng.choice(["audio"] * 4 + ["mark", "end_segment", "interrupt", "pause", "motion"])
            if op == "motion":
                await ws.send_str(json.dumps({"type": "motion", "gestures": rng.random() * 2}))
            elif op == "audio":
                samples = np.random.default_rng(rng.randrange(1 << 30)).standard_normal(
                    rng.randint(1, rate // 2)
                )
                await ws.send_bytes((samples * 3000).astype("<i2").tobytes())
            elif op == "pause":
                await asyncio.sleep(rng.random() * 0.3)
            else:
                await ws.send_str(json.dumps({"type": op, "name": f"m{len(got)}"}))
        await ws.send_str(json.dumps({"type": "finish"}))
        await asyncio.wait_for(reader, 120)
    return got


@pytest.mark.parametrize("pace", ["asap", "realtime"])
async def test_random_valid_sessions_keep_frames_and_audio_together(client, pace):
    """Over the wire, whatever the order of valid messages: frames in order (resuming where an
    interrupt says playback stopped), each followed by its own audio, no error, then done."""
    rng = random.Random(pace)
    for _ in range(3):
        expected, open_frame = 0, None
        got = await random_valid_session(client, rng, pace)
        for kind, x in got:
            if kind == "v":
                assert open_frame is None and x == expected
                open_frame, expected = x, x + 1
            elif kind == "a":
                assert x == open_frame
                open_frame = None
            elif x["type"] == "interrupted":
                assert open_frame is None and x["played_frames"] <= expected
                expected = x["played_frames"]
            else:
                assert x["type"] != "error", x
        assert open_frame is None and got[-1][1]["type"] == "done"
    assert await released(client)


async def test_random_valid_sessions_make_one_playable_fmp4_stream(client):
    """The same with ``format: fmp4``: the pieces concatenate to one MP4 whose video frames are
    those the session reports, in order, with as much AAC audio as video."""
    rng = random.Random("fmp4")
    decoded = sessions = 0
    while decoded < 2 and sessions < 6:  # some sessions are interrupted before any frame
        sessions += 1
        got = await random_valid_session(client, rng, "asap", fmt="fmp4")
        events = [x for kind, x in got if kind == "e"]
        assert not [e for e in events if e["type"] == "error"] and events[-1]["type"] == "done"
        data = b"".join(x for kind, x in got if kind == "f")
        if events[-1]["frames"] == 0:  # interrupted before the first frame: nothing to send
            assert not data
            continue
        with av.open(io.BytesIO(data)) as c:
            frames = list(c.decode(c.streams.video[0], c.streams.audio[0]))
        video = [float(f.time) for f in frames if isinstance(f, av.VideoFrame)]
        audio = [f for f in frames if isinstance(f, av.AudioFrame)]
        # No edit list: the AAC priming starts the timeline, before the first frame's audio.
        audio_s = sum(f.samples / f.sample_rate for f in audio) - AAC_PRIMING / audio[0].sample_rate
        assert len(video) == events[-1]["frames"]
        assert all(b > a for a, b in zip(video, video[1:], strict=False))
        assert abs(audio_s - len(video) / 25) < 0.05  # one AAC frame of slack at the end
        decoded += 1
    assert decoded >= 2 and await released(client)
