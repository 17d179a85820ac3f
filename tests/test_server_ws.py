"""The websocket API end to end: a real server, the Python client, and bad inputs."""

from __future__ import annotations

import asyncio
import gc
import io
import itertools
import json
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from clients.ws.client import decode_jpeg, run_client, wav_chunks
from mmgt.audio import load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.video import AAC_PRIMING
from server.app import CTX, make_app
from server.settings import ServerSettings
from server.ws import LastJpeg, WsConnection
from tests.ws_helpers import assert_lips_follow_audio, mouth_opening, ws_url

pytestmark = pytest.mark.asyncio(loop_scope="module")
SIZE = 256


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client():
    settings = ServerSettings(
        driver="procedural", frame_size=SIZE, max_sessions=3, send_timeout_s=1.0
    )
    app = make_app(settings)
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))


async def start(ws, **fields) -> dict:  # noqa: ANN001, ANN003
    msg = {"type": "start", "protocol": 1, "sample_rate": 16000, "channels": 1, **fields}
    await ws.send_str(json.dumps(msg))
    return await ws.receive_json(timeout=30)


async def idle_server(client: TestClient) -> None:
    ctx = client.app[CTX]
    for _ in range(200):
        if ctx.admission.active == 0 and not ctx.engine.sessions:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{ctx.admission.active} admitted, {len(ctx.engine.sessions)} sessions still open"
    )


async def test_speech_in_video_and_synced_audio_out(client, speech):
    audio = speech[: 16000 * 6]
    got = await run_client(
        ws_url(client), wav_chunks(audio, 16000, realtime=False), sample_rate=16000, pace="asap"
    )
    assert got.ready["width"] == SIZE and got.ready["audio_rate"] == 16000
    video = sorted(got.video)
    assert [v[0] for v in video] == list(range(150))
    assert not got.errors()
    assert any(e["type"] == "vad" and e["speech"] for e in got.events)
    done = got.events[-1]
    assert done["type"] == "done" and done["frames"] == 150
    back = got.audio_samples()
    # The audio comes back unchanged, placed by pts (to PCM16 precision).
    np.testing.assert_allclose(back[: len(audio)], audio, atol=2e-4)
    # Lips follow the audio envelope that arrives with them (procedural driver: +18 ms).
    await assert_lips_follow_audio(client, [decode_jpeg(v[1]) for v in video], back)
    await idle_server(client)


async def test_default_driver_lips_in_sync(speech):
    """The default (SMGA) driver over the websocket: its lip lead is within the 40 ms too
    (-17 ms on this clip)."""
    app = make_app(ServerSettings(frame_size=SIZE, max_sessions=1))
    async with TestClient(TestServer(app)) as own:
        assert own.app[CTX].engine.driver_name.startswith("smga")  # what "auto" picks
        got = await run_client(ws_url(own), wav_chunks(speech[: 16000 * 6], 16000, realtime=False),
                               sample_rate=16000, pace="asap")  # fmt: skip
        assert not got.errors() and got.events[-1]["frames"] == 150
        frames = [decode_jpeg(v[1]) for v in sorted(got.video)]
        await assert_lips_follow_audio(own, frames, got.audio_samples())


async def test_fragmented_mp4_stream_is_playable_and_in_sync(client, speech, tmp_path):
    """``format: fmp4``: pieces arrive while the session runs (an init segment, then
    fragments); together they are an MP4 whose frames and AAC audio line up."""
    import av

    audio = speech[: 16000 * 6]
    got = await run_client(ws_url(client), wav_chunks(audio, 16000, realtime=False),
                           sample_rate=16000, pace="asap", video_format="fmp4")  # fmt: skip
    assert not got.video and not got.audio and not got.errors()
    assert got.fmp4[4:8] == b"ftyp" and b"moov" in got.fmp4[:4096]
    assert got.fmp4.count(b"moof") >= 100  # about one fragment per frame (40 ms default)
    assert got.fmp4_frames == 150 and got.events[-1]["frames"] == 150
    path = tmp_path / "stream.mp4"
    path.write_bytes(got.fmp4)
    with av.open(str(path)) as c:
        decoded = [(float(f.time), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        back = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    frames = [image for _, image in decoded]
    assert len(frames) == 150 and frames[0].shape == (SIZE, SIZE, 3)
    # No edit list: the audio starts at 0 with the AAC priming, and frame 0 plays at the first
    # real sample, one frame before frame 1 (the muxer stretches frame 0 back to 0).
    first = decoded[1][0] - 1 / 25
    assert first == pytest.approx(AAC_PRIMING / 16000)
    back = back[round(first * 16000) :]  # the audio from frame 0 on
    assert abs(back.size - audio.size) < 2048  # AAC frames of 1024 samples
    await assert_lips_follow_audio(client, frames, back)  # lips and the muxed audio
    await idle_server(client)


async def test_a_held_image_is_not_encoded_again(monkeypatch):
    """Degraded quality repeats images; the sender reuses the repeated image's JPEG."""
    calls = []

    def encode(image, quality):  # noqa: ANN001, ANN202
        calls.append(quality)
        return bytes([len(calls)])

    monkeypatch.setattr("server.ws.encode_jpeg", encode)
    jpegs = LastJpeg(70)
    a, b = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    got = [await jpegs.encode(img) for img in (a, a, a, b, b, a)]
    assert got == [b"\x01", b"\x01", b"\x01", b"\x02", b"\x02", b"\x03"]
    assert calls == [70, 70, 70]  # equal pixels are not enough: only the same image is reused


async def test_bad_messages_get_error_events_and_the_session_goes_on(client):
    async with client.ws_connect("/ws") as ws:
        await ws.send_bytes(b"\x00\x00")
        assert (await ws.receive_json())["code"] == "not_started"
        await ws.send_str("{not json")
        assert (await ws.receive_json())["code"] == "bad_json"
        await ws.send_str(json.dumps([1, 2]))
        assert (await ws.receive_json())["code"] == "bad_message"
        # JSON that json.loads refuses with other errors: too deep, a 5000-digit integer.
        for crafted in (
            "[" * 100_000 + "]" * 100_000,
            '{"type": "start", "x": 1' + "0" * 5000 + "}",
        ):
            await ws.send_str(crafted)
            reply = await ws.receive_json()
            assert reply["code"] == "bad_json" and len(reply["message"]) < 200, reply
        for bad in (
            {"sample_rate": 7},
            {"sample_rate": "16k"},
            {"channels": 9},
            {"format": "gif"},
            {"format": "fmp4", "fragment_ms": 5},
            {"pace": "warp"},
            {"audio_rate": 44101},
            {"protocol": 2},
            {"jpeg_quality": True},  # JSON booleans are not numbers
            {"sample_rate": True},
            {"audio_out": "yes"},
            {"format": "fmp4", "fragment_ms": 40.5},
            {"motion": {"head": 3}},
            {"motion": {"smile": 1}},
            {"motion": "calm"},
            {"motion": {"head": 10**400}},  # overflows a float
            {"protocol": True},
            {"protocol": 1.0},
            {"pace": "x" * 10_000},
        ):
            reply = await start(ws, **bad)
            assert reply["type"] == "error" and reply["code"] == "bad_start", bad
            assert len(reply["message"]) < 200, reply  # the client's value is cut short
        reply = await start(ws, avatar="nobody")
        assert reply["code"] == "unknown_avatar"
        reply = await start(ws)
        assert reply["type"] == "ready"
        await ws.send_str('{"type": "motion", "head": 1' + "0" * 400 + "}")
        assert (await next_of(ws, "error"))["code"] == "bad_message"
        await ws.send_bytes(b"\x00\x01\x02")  # odd byte count
        assert (await next_of(ws, "error"))["code"] == "bad_audio"
        await ws.send_str(json.dumps({"type": "dance"}))
        assert (await next_of(ws, "error"))["code"] == "bad_message"
        await ws.send_bytes(np.zeros(3200, "<i2").tobytes())
        await ws.send_str(json.dumps({"type": "finish"}))
        assert (await next_of(ws, "done"))["frames"] >= 5
    async with client.ws_connect("/ws") as ws:  # above 96 kHz the audio comes back at 48 kHz
        assert (await start(ws, sample_rate=192_000))["audio_rate"] == 48_000
    await idle_server(client)


async def next_of(ws, kind: str) -> dict:  # noqa: ANN001
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind:
            return json.loads(msg.data)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            raise AssertionError(f"closed before {kind}")


async def test_a_failing_sender_reports_and_closes_and_the_server_goes_on(
    client, speech, monkeypatch
):
    import server.ws as ws_module

    def broken(rgb, quality):  # noqa: ANN001, ANN202
        raise ValueError("encoder exploded")

    monkeypatch.setattr(ws_module, "encode_jpeg", broken)
    async with client.ws_connect("/ws") as ws:
        assert (await start(ws))["type"] == "ready"
        await ws.send_bytes((speech[:16000] * 32767).astype("<i2").tobytes())
        err = await next_of(ws, "error")
        assert err["code"] == "internal" and err["fatal"] and "encoder exploded" in err["message"]
        msg = await ws.receive(timeout=30)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    monkeypatch.undo()
    await idle_server(client)
    got = await run_client(ws_url(client), wav_chunks(speech[:16000], 16000, realtime=False),
                           sample_rate=16000, pace="asap")  # fmt: skip
    assert len(got.video) == 25 and not got.errors()
    await idle_server(client)


async def test_interrupt_reports_the_played_position(client, speech):
    async with client.ws_connect("/ws") as ws:
        assert (await start(ws, pace="realtime"))["type"] == "ready"
        pcm = (speech[: 16000 * 8] * 32767).astype("<i2")
        for i in range(0, pcm.size, 8000):
            await ws.send_bytes(pcm[i : i + 8000].tobytes())
        frames = 0
        while frames < 10:
            msg = await ws.receive(timeout=30)
            frames += msg.type == WSMsgType.BINARY and msg.data[0] == 1
        await ws.send_str(json.dumps({"type": "interrupt"}))
        event = await next_of(ws, "interrupted")
        assert 10 <= event["played_frames"] < 100
        assert event["dropped_audio_s"] > 4.0
        await ws.send_str(json.dumps({"type": "finish"}))
        await next_of(ws, "done")
    await idle_server(client)


async def test_motion_dials_at_start_and_mid_stream(client, speech):
    """``motion`` in ``start`` holds the avatar still (mouth dial 0: the lips do not move); a
    ``motion`` message turns the mouth back on for the audio after it, and is echoed."""
    pcm = (speech[: 16000 * 4] * 32767).astype("<i2")
    zero = {"head": 0, "gestures": 0, "mouth": 0, "blinks": 0}
    async with client.ws_connect("/ws") as ws:
        ready = await start(ws, pace="asap", motion=zero)
        assert ready["motion"] == zero
        await ws.send_str(json.dumps({"type": "motion", "head": 9}))
        assert (await next_of(ws, "error"))["code"] == "bad_message"
        frames: list[np.ndarray] = []

        async def take(n: int) -> None:
            while len(frames) < n:
                msg = await ws.receive(timeout=30)
                if msg.type == WSMsgType.BINARY and msg.data[0] == 1:
                    frames.append(decode_jpeg(msg.data[16:]))

        await ws.send_bytes(pcm[: 16000 * 2].tobytes())
        await ws.send_str(json.dumps({"type": "end_segment"}))
        await take(50)
        await ws.send_str(json.dumps({"type": "motion", "mouth": 1}))
        assert (await next_of(ws, "motion")) == {"type": "motion", **zero, "mouth": 1}
        await ws.send_bytes(pcm[16000 * 2 :].tobytes())
        await ws.send_str(json.dumps({"type": "finish"}))
        await take(100)
        await next_of(ws, "done")
    box = (await (await client.get("/avatars/default")).json())["mouth_box"]
    still, talking = mouth_opening(frames[:50], box), mouth_opening(frames[50:], box)
    assert still.std() < 0.5, still  # JPEG of the same image: the same bytes
    assert talking.std() > 1.0, talking  # (2.2 here)
    await idle_server(client)


async def test_the_operators_avatars_are_listed_and_usable(speech, caplog):
    """``--avatar NAME=PHOTO``: prepared at start-up (a photo's notes logged as warnings),
    listed after the bundled one, usable by name; uploads still never appear in the list."""
    photo = Path(__file__).parent / "data" / "grace_hopper.jpg"
    profile = Path(__file__).parent / "data" / "camera.png"
    operators = (("hopper", str(photo)), ("camera", str(profile)))
    settings = ServerSettings(driver="procedural", frame_size=SIZE, avatars=operators)
    async with TestClient(TestServer(make_app(settings))) as own:
        listed = ["default", "hopper", "camera"]
        assert (await (await own.get("/avatars")).json()) == {"avatars": listed}
        warned = [r.getMessage() for r in caplog.records if r.name == "server.avatars"]
        note = own.app[CTX].avatars.get("camera").notes[0]
        assert warned == [f"--avatar camera={profile}: {note}"]  # hopper faces the camera
        info = await (await own.get("/avatars/hopper")).json()
        assert info["id"] == "hopper" and info["size"] == SIZE
        resp = await own.get("/avatars/hopper/image")  # the page's poster: the framed photo
        assert resp.status == 200 and resp.content_type == "image/jpeg"
        poster = decode_jpeg(await resp.read()).astype(np.float32)
        assert np.abs(poster - own.app[CTX].avatars.get("hopper").image).mean() < 6  # JPEG
        assert (await own.get("/avatars/nobody/image")).status == 404
        got = await run_client(ws_url(own), wav_chunks(speech[:16000], 16000, realtime=False),
                               sample_rate=16000, pace="asap", avatar="hopper")  # fmt: skip
        assert got.ready["avatar"] == "hopper" and not got.errors()
        first = decode_jpeg(sorted(got.video)[0][1]).astype(np.float32)
        hopper = own.app[CTX].avatars.get("hopper").image.astype(np.float32)
        default = own.app[CTX].avatars.get("default").image.astype(np.float32)
        assert np.abs(first - hopper).mean() < 0.3 * np.abs(first - default).mean()
        assert info["notes"] == []  # nothing about the photo to point out
        resp = await own.post("/avatars", data=photo.read_bytes())  # an upload …
        assert resp.status == 200 and (await resp.json())["notes"] == []
        assert (await (await own.get("/avatars")).json())["avatars"] == listed
        # A face in profile: the upload's answer and its info say so (and it is still usable).
        profile = (Path(__file__).parent / "data" / "camera.png").read_bytes()
        resp = await own.post("/avatars", data=profile)
        body = await resp.json()
        assert resp.status == 200 and len(body["notes"]) == 1
        assert body["notes"][0].startswith("the face is turned about")
        info = await (await own.get(f"/avatars/{body['id']}")).json()
        assert info["notes"] == body["notes"]


async def test_marks_come_with_the_frame_where_their_audio_plays(client, speech):
    rate = 44100  # resampled to the 16 kHz timeline: the mark must count what is held back
    pcm = (load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"), sample_rate=rate)[: rate * 4]
           * 32767).astype("<i2")  # fmt: skip
    cuts = [0, 12345, 44100, 70000, 123457, pcm.size]  # input samples before each mark
    async with client.ws_connect("/ws") as ws:
        assert (await start(ws, sample_rate=rate, pace="asap"))["type"] == "ready"
        await ws.send_str(json.dumps({"type": "mark", "name": "start"}))
        for k, (a, b) in enumerate(itertools.pairwise(cuts[:-1] + [pcm.size])):
            for i in range(a, b, 3000):
                await ws.send_bytes(pcm[i : min(i + 3000, b)].tobytes())
            await ws.send_str(json.dumps({"type": "mark", "name": f"m{k}"}))
        for bad in ({}, {"name": ""}, {"name": 7}, {"name": "x" * 201}):
            await ws.send_str(json.dumps({"type": "mark", **bad}))
            assert (await next_of(ws, "error"))["code"] == "bad_message"
        await ws.send_str(json.dumps({"type": "finish"}))
        order, marks = [], {}
        while True:
            msg = await ws.receive(timeout=30)
            if msg.type == WSMsgType.BINARY and msg.data[0] == 1:
                order.append(("frame", int.from_bytes(msg.data[12:16], "little")))
            elif msg.type == WSMsgType.TEXT:
                event = json.loads(msg.data)
                if event["type"] == "mark":
                    marks[event["name"]] = event
                    order.append(("mark", event["name"]))
                elif event["type"] == "done":
                    break
    assert list(marks) == ["start", "m0", "m1", "m2", "m3", "m4"]  # in order, each once
    for name, cut in zip(marks, cuts, strict=True):
        event = marks[name]
        assert event["t"] == pytest.approx(cut / rate, abs=1e-4), name
        assert event["frame"] == int(cut / rate * 25)
        # It arrives just before the frame in which its point of the audio plays (the mark at
        # the very end: after the last frame).
        at = order.index(("mark", name))
        frames = sum(kind == "frame" for kind, _ in order)
        after = next((v for kind, v in order[at:] if kind == "frame"), frames)
        assert after == event["frame"], (name, str(order[-6:]))
    await idle_server(client)


async def test_marks_after_an_interrupt_or_beyond_the_limit(client, speech, monkeypatch):
    import engine.session

    monkeypatch.setattr(engine.session, "MAX_PENDING_MARKS", 3)
    async with client.ws_connect("/ws") as ws:
        assert (await start(ws, pace="realtime"))["type"] == "ready"
        pcm = (speech[: 16000 * 8] * 32767).astype("<i2")
        await ws.send_bytes(pcm[:8000].tobytes())
        await ws.send_str(json.dumps({"type": "mark", "name": "played"}))
        await ws.send_bytes(pcm[8000:].tobytes())
        for name in ("dropped", "dropped too", "one too many"):
            await ws.send_str(json.dumps({"type": "mark", "name": name}))
        assert (await next_of(ws, "error"))["code"] == "mark_limit"
        assert (await next_of(ws, "mark"))["name"] == "played"
        await ws.send_str(json.dumps({"type": "interrupt"}))
        await next_of(ws, "interrupted")
        await ws.send_str(json.dumps({"type": "mark", "name": "after"}))  # room again
        await ws.send_str(json.dumps({"type": "finish"}))
        # Control messages after finish are refused; the stream still ends normally.
        for late in ("end_segment", "finish", "mark"):
            await ws.send_str(json.dumps({"type": late, "name": "late"}))
        events = []
        while (event := await next_of_any(ws))["type"] != "done":
            events.append(event)
        assert [e["name"] for e in events if e["type"] == "mark"] == ["after"]
        refused = [e for e in events if e["type"] == "error"]
        assert [e["code"] for e in refused] == ["bad_message"] * 3
        assert all("already finished" in e["message"] and not e["fatal"] for e in refused)
    await idle_server(client)


async def test_the_python_client_sends_marks_between_chunks(client, speech):
    async def source():  # noqa: ANN202
        async for chunk in wav_chunks(speech[:16000], 16000, realtime=False):
            yield chunk
        yield {"type": "mark", "name": "one second"}

    got = await run_client(ws_url(client), source(), sample_rate=16000, pace="asap")
    marks = [e for e in got.events if e["type"] == "mark"]
    assert marks == [{"type": "mark", "name": "one second", "frame": 25, "t": 1.0}]
    await idle_server(client)


async def next_of_any(ws) -> dict:  # noqa: ANN001
    while True:
        msg = await ws.receive(timeout=30)
        if msg.type == WSMsgType.TEXT:
            return json.loads(msg.data)
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED):
            raise AssertionError("closed before done")


async def test_admission_control_refuses_clearly(client):
    ctx = client.app[CTX]
    ctx.admission.limit = 1
    try:
        async with client.ws_connect("/ws") as first, client.ws_connect("/ws") as second:
            assert (await start(first))["type"] == "ready"
            reply = await start(second)
            assert reply["code"] == "server_full" and reply["fatal"]
            msg = await second.receive(timeout=10)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    finally:
        ctx.admission.limit = 3
    await idle_server(client)
    metrics = await (await client.get("/metrics")).text()
    assert "mmgt_sessions_refused_total 1.0" in metrics


async def test_oversized_message_and_flood_close_only_that_connection(client):
    async with client.ws_connect("/ws") as ws:
        await start(ws)
        await ws.send_bytes(b"\x00" * (2 * 1024 * 1024))
        msg = await ws.receive(timeout=10)
        while msg.type == WSMsgType.TEXT or msg.type == WSMsgType.BINARY:
            msg = await ws.receive(timeout=10)
        assert ws.close_code == 1009  # message too big
    async with client.ws_connect("/ws") as ws:
        for _ in range(3000):
            await ws.send_str('{"type": "end_segment"}')
        event = await next_of(ws, "error")
        assert event["code"] in ("flood", "not_started")
        if event["code"] == "not_started":
            event = await next_of_code(ws, "flood")
        assert event["fatal"]
    await idle_server(client)
    assert (await (await client.get("/health")).json())["ok"]


async def next_of_code(ws, code: str) -> dict:  # noqa: ANN001
    while True:
        event = await next_of(ws, "error")
        if event["code"] == code:
            return event


async def test_origin_is_checked(client):
    resp = await client.get(
        "/ws",
        headers={
            "Origin": "https://evil.example",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    )
    assert resp.status == 403
    async with client.ws_connect("/ws", headers={"Origin": str(client.make_url(""))}) as ws:
        assert (await start(ws))["type"] == "ready"
    await idle_server(client)


async def test_slow_consumer_is_dropped_and_the_server_survives(client, speech):
    async with client.ws_connect("/ws") as ws:
        await start(ws, pace="asap")
        pcm = (np.tile(speech, 2)[: 16000 * 30] * 32767).astype("<i2")
        for i in range(0, pcm.size, 16000):
            await ws.send_bytes(pcm[i : i + 16000].tobytes())
        await ws.send_str(json.dumps({"type": "finish"}))
        await asyncio.sleep(4.0)  # read nothing: the server's send times out (1 s here)
        codes = []
        while (msg := await ws.receive(timeout=10)).type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if msg.type == WSMsgType.TEXT:
                codes.append(json.loads(msg.data)["type"])
        assert "done" not in codes, __import__("collections").Counter(codes)
    await idle_server(client)


async def test_abrupt_disconnects_leak_no_tasks_or_memory(client, speech):
    pcm = (speech[:16000] * 32767).astype("<i2").tobytes()
    url = ws_url(client)

    async def cycle(http: aiohttp.ClientSession) -> None:
        # A plain client session: the test client keeps every websocket it opened.
        async with http.ws_connect(url) as ws:
            await start(ws)
            await ws.send_bytes(pcm)
            await ws.receive(timeout=30)  # then vanish mid-stream
        await idle_server(client)

    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # warm caches and pools first
            await cycle(http)
        await asyncio.sleep(0.2)
        gc.collect()
        tasks = len(asyncio.all_tasks())
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(50):
            await cycle(http)
        await asyncio.sleep(0.3)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
    assert len(asyncio.all_tasks()) <= tasks
    assert grown < 2 * 1024 * 1024


async def test_uploads_are_checked_and_usable(client):
    bad = await client.post("/avatars", data=b"GIF89a not really" * 10)
    assert bad.status in (415, 422)
    assert "error" in await bad.json()
    text = await client.post("/avatars", data=b"hello, I am not a photo")
    assert text.status == 415
    wav = await client.post("/avatars", data=b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64))
    assert wav.status == 415
    noise = np.random.default_rng(0).integers(0, 255, (300, 300, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    nobody = await client.post("/avatars", data=buf.getvalue())
    assert nobody.status == 422 and "person" in (await nobody.json())["error"].lower()
    huge = await client.post("/avatars", data=b"\x89PNG\r\n\x1a\n" + b"\x00" * (11 << 20))
    assert huge.status == 413 and "larger than 10 MB" in (await huge.json())["error"]
    # Over the pixel limit (56 megapixels in a small file): refused unread, also a 413.
    buf = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buf, "PNG")
    wide = await client.post("/avatars", data=buf.getvalue())
    assert wide.status == 413 and "megapixels" in (await wide.json())["error"]
    buf = io.BytesIO()
    Image.fromarray(noise[:100]).save(buf, "PNG")
    small = await client.post("/avatars", data=buf.getvalue())
    assert small.status == 422 and "too small" in (await small.json())["error"]
    assert (await client.post("/avatars", data=b"")).status == 400
    form = aiohttp.FormData()
    form.add_field("photo", b"\xff\xd8\xff", filename="me.jpg")
    unnamed = await client.post("/avatars", data=form)
    assert unnamed.status == 400 and "'image' field" in (await unnamed.json())["error"]
    photo = BUNDLED_AVATAR.read_bytes()
    ok = await client.post("/avatars", data=photo)
    assert ok.status == 200
    avatar_id = (await ok.json())["id"]
    # Uploads are private: usable by id, never listed to other clients.
    assert (await (await client.get("/avatars")).json())["avatars"] == ["default"]
    assert (await client.get(f"/avatars/{avatar_id}")).status == 200
    async with client.ws_connect("/ws") as ws:
        assert (await start(ws, avatar=avatar_id))["type"] == "ready"
    await idle_server(client)


async def test_health_and_metrics(client, speech):
    health = await (await client.get("/health")).json()
    assert health["ok"] and health["max_sessions"] == 3 and health["driver"] == "procedural"
    async with client.ws_connect("/ws") as ws:
        ready = await start(ws)
        await ws.send_bytes((speech[:16000] * 32767).astype("<i2").tobytes())
        for _ in range(10):  # some of the frames it makes
            assert (await ws.receive(timeout=30)).type is not None
        text = await (await client.get("/metrics")).text()
    session = f'session="{ready["session"]}"'
    for name in (
        "mmgt_sessions ",
        "mmgt_stage_seconds_bucket",
        "mmgt_latency_seconds_count",
        "mmgt_sessions_opened_total",
        f"mmgt_session_frames_total{{{session}}}",
        f"mmgt_session_buffered_seconds{{{session}}}",
        f"mmgt_session_idle_seconds_total{{{session}}}",
        f'mmgt_session_late_audio_made_up_seconds_total{{method="compressed",{session}}}',
    ):
        assert name in text
    await idle_server(client)


async def test_concurrent_sessions_are_isolated(client, speech):
    """Two sessions at once: one speaks, one is silent; each sees only its own audio."""
    talk = speech[: 16000 * 4]
    quiet = np.zeros_like(talk)
    url = ws_url(client)
    a, b = await asyncio.gather(
        run_client(url, wav_chunks(talk, 16000, realtime=False), sample_rate=16000, pace="asap"),
        run_client(url, wav_chunks(quiet, 16000, realtime=False), sample_rate=16000, pace="asap"),
    )
    assert a.ready["session"] != b.ready["session"]
    assert len(a.video) == len(b.video) == 100
    box = (await (await client.get("/avatars/default")).json())["mouth_box"]
    motion = [
        np.abs(np.diff(mouth_opening([decode_jpeg(v[1]) for v in sorted(r.video)], box)))
        for r in (a, b)
    ]
    assert motion[0].mean() > 5 * (motion[1].mean() + 1e-3)
    assert np.abs(b.audio_samples()).max() == 0.0
    await idle_server(client)


async def test_command_line_client_writes_an_mp4(client, speech, tmp_path):
    import av

    from clients.ws.__main__ import main as client_main
    from mmgt.audio import write_wav

    wav = tmp_path / "in.wav"
    write_wav(wav, speech[: 16000 * 2], 16000)
    out = tmp_path / "out.mp4"
    code = await asyncio.to_thread(
        client_main, ["--url", ws_url(client), "--wav", str(wav), "--out", str(out), "--fast"]
    )
    assert code == 0 and out.exists()
    with av.open(str(out)) as container:
        kinds = {s.type for s in container.streams}
        frames = sum(1 for _ in container.decode(video=0))
    assert kinds == {"video", "audio"} and frames == 50
    # fmp4, with every motion dial at 0: the photo itself, still, while the audio plays.
    fmp4 = tmp_path / "fmp4.mp4"
    still = ["--head-motion", "0", "--gestures", "0", "--mouth", "0", "--blinks", "0"]
    argv = ["--url", ws_url(client), "--wav", str(wav), "--out", str(fmp4), "--fast",
            "--format", "fmp4", *still]  # fmt: skip
    code = await asyncio.to_thread(client_main, argv)
    assert code == 0
    with av.open(str(fmp4)) as container:
        assert {s.type for s in container.streams} == {"video", "audio"}
        images = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(images) == 50
    change = np.abs(images.astype(np.float32) - images[-1]).mean(axis=(1, 2, 3))
    assert np.median(change) < 0.5, change  # (x264 settles over the first frames)
    bad = await asyncio.to_thread(
        client_main, ["--url", ws_url(client), "--wav", str(wav), "--avatar", "nobody"]
    )
    assert bad == 1
    await idle_server(client)


async def test_shutdown_closes_live_sessions_cleanly(speech):
    app = make_app(ServerSettings(driver="procedural", frame_size=128))
    async with TestClient(TestServer(app)) as c:
        ws = await c.ws_connect("/ws")
        await start(ws)
        await ws.send_bytes((speech[:16000] * 32767).astype("<i2").tobytes())
        await ws.receive(timeout=30)
        assert app[CTX].admission.active == 1
    # Leaving the context shut the server down: the connection and its session are gone.
    assert app[CTX].admission.active == 0 and not app[CTX].engine.sessions
    assert ws.closed


async def test_a_cancel_that_lands_as_a_send_completes_stops_the_sender():
    """Closing a connection cancels its sender; the cancel must hold even when it lands in
    the step where a send completes (Python 3.11's wait_for dropped it there, and the
    sender kept streaming for most of a minute after SIGTERM)."""

    class InstantWs:  # every send completes in the step it starts
        closed = False

        async def send_bytes(self, data: bytes) -> None:
            pass

    conn = WsConnection(SimpleNamespace(settings=ServerSettings()), InstantWs(), "ws-test")

    async def stream() -> None:
        while True:
            await conn.send_bytes(b"frame")
            await asyncio.sleep(0)

    for steps_before_cancel in range(6):
        sender = asyncio.create_task(stream())
        for _ in range(steps_before_cancel):
            await asyncio.sleep(0)
        sender.cancel()
        await asyncio.wait({sender}, timeout=1.0)
        stopped = sender.cancelled()
        sender.cancel()  # a sender that survived must not outlive the test
        assert stopped, f"cancel after {steps_before_cancel} loop steps was lost"


async def test_a_connection_that_starts_no_session_is_closed():
    """Idle sockets cannot pile up: no ``start`` within ``start_timeout_s`` (a bad one does not
    count) gets a fatal ``start_timeout`` error and the close; one that started stays open."""
    settings = ServerSettings(driver="procedural", frame_size=128, start_timeout_s=1.0)
    async with TestClient(TestServer(make_app(settings))) as c:
        idle = await c.ws_connect("/ws")
        tried = await c.ws_connect("/ws")
        assert (await start(tried, sample_rate=1))["code"] == "bad_start"
        started = await c.ws_connect("/ws")
        assert (await start(started))["type"] == "ready"
        for ws in (idle, tried):
            err = await ws.receive_json(timeout=10)
            assert (err["type"], err["code"], err["fatal"]) == ("error", "start_timeout", True)
            assert (await ws.receive(timeout=10)).type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
        await asyncio.sleep(0.5)
        assert not started.closed
        await started.send_str(json.dumps({"type": "finish"}))
        kinds = [json.loads(m.data)["type"] async for m in started if m.type == WSMsgType.TEXT]
        assert kinds[-1] == "done" and "error" not in kinds
        await idle_server(c)


async def test_an_upload_flood_is_refused_as_busy_while_sessions_stream(client, speech):
    """Photos are prepared one at a time in the store's own thread; beyond the few that may
    wait, uploads get 503 with Retry-After at once. A session streaming meanwhile gets every
    frame (preparation does not take the threads its frames are encoded in)."""
    photo = (Path(__file__).parent / "data" / "grace_hopper.jpg").read_bytes()

    async def upload(i: int) -> tuple[int, dict, str | None]:
        # Distinct bytes (an unknown id each): the JPEG with a few bytes after its end.
        async with client.post("/avatars", data=photo + bytes([i]) * 8) as resp:
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    audio = speech[: 16000 * 2]
    session = run_client(
        ws_url(client), wav_chunks(audio, 16000, realtime=False), sample_rate=16000, pace="asap"
    )
    got, *answers = await asyncio.gather(session, *(upload(i) for i in range(12)))
    busy = [a for a in answers if a[0] == 503]
    assert {a[0] for a in answers} == {200, 503} and len(busy) <= 12 - 1
    assert all("try again" in body["error"] and retry == "5" for _, body, retry in busy)
    assert got.events[-1]["type"] == "done" and len(got.video) == 50 and not got.errors()
