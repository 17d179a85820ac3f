"""The page's Start and Stop in headless Chromium (fake microphone), driven over the DevTools
protocol: Stop while Start still waits for the microphone leaves nothing open on either side,
Start works again after Stop, a photo uploaded during a session leaves the session and its
status alone, and a session the server ends, or a microphone that goes away, returns the page to
idle with a message instead of a frozen picture."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import av
import pytest

from mmgt.audio import load_audio, write_wav
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.drivers.controls import MotionControls
from server.app import CTX, ServerContext, make_app
from server.settings import ServerSettings
from tests.devtools import CHROMIUM, OPTIONS, READY, DevTools, browser_page

PHOTO = Path(__file__).parent / "data" / "grace_hopper.jpg"
SPEECH = BUNDLED_AVATAR.with_name("speech_sample.wav")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (setup.sh --dev)"),
]

FAKE_MEDIA = (
    "--use-fake-ui-for-media-stream",  # allow the microphone without asking
    "--use-fake-device-for-media-stream",  # a generated tone as the microphone
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-quic",
)
STATUS = "document.getElementById('status').textContent"
ERROR = "document.getElementById('error')"
# Video from the server is on screen and moving.
PLAYING = (
    "(v => v.srcObject && v.videoWidth > 0 && v.currentTime > 0.5)"
    "(document.getElementById('video'))"
)
IDLE = (
    f"{STATUS} === 'idle' && !document.getElementById('start').disabled"
    " && document.getElementById('stop').disabled && !document.getElementById('video').srcObject"
)


# Keeps the page's microphone stream as window.mic (the page is a module: its state is private).
KEEP_MIC = (
    "(md => { const gum = md.getUserMedia.bind(md);"
    " md.getUserMedia = async (c) => (window.mic = await gum(c)); })(navigator.mediaDevices); 1"
)


def click(button: str) -> str:
    return f"document.getElementById('{button}').click()"


def open_on_server(ctx: ServerContext) -> int:
    """Peer connections admitted plus engine sessions open."""
    return ctx.admission.active + len(ctx.engine.sessions)


async def wait_server(ctx: ServerContext, count: int, seconds: float = 30) -> None:
    for _ in range(int(seconds * 10)):
        if open_on_server(ctx) == count:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"the server has {open_on_server(ctx)} open, expected {count}")


async def start_and_play(page: DevTools, ctx: ServerContext) -> None:
    await page.eval(click("start"))
    await page.wait_for(PLAYING)
    assert ctx.admission.active == 1 and len(ctx.engine.sessions) == 1
    assert await page.eval(f"document.getElementById('start').disabled && {ERROR}.hidden")


async def test_start_stop_restart_and_a_session_the_server_ends(tmp_path: Path) -> None:
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    ctx = app[CTX]
    async with browser_page(app, tmp_path / "profile", FAKE_MEDIA) as b:
        page = b.page
        await page.wait_for(READY)
        # Stop pressed while Start still waits for the microphone: the start is abandoned, so
        # no peer connection reaches the server and the page stays idle.
        await page.eval(f"{click('start')}; {click('stop')}; 1")
        await asyncio.sleep(5)
        assert open_on_server(ctx) == 0
        assert await page.eval(IDLE)
        # Start, Stop, Start again: each start gets its own session, each stop releases it.
        for _ in range(2):
            await start_and_play(page, ctx)
            await page.eval(click("stop"))
            await wait_server(ctx, 0)
            assert await page.eval(IDLE)
        # A photo uploaded during a session: offered for the next start; the session streams on
        # and the status is the connection's again once the photo is ready.
        await start_and_play(page, ctx)
        await choose_file(page, "#photo", PHOTO)
        await page.wait_for(f"{OPTIONS}.length === 2 && !{STATUS}.includes('preparing')")
        assert (await page.eval(STATUS)).startswith("connected")
        assert open_on_server(ctx) == 2 and await page.eval(f"{ERROR}.hidden")
        await page.eval(click("stop"))
        await wait_server(ctx, 0)
        # The server ends the session (here: closes it as on shutdown): the page says so and is
        # ready to start again rather than showing the last frame as if it were live.
        await start_and_play(page, ctx)
        for close in list(ctx.connections):
            await close()
        await page.wait_for(f"!{ERROR}.hidden", 20)
        assert "server ended the session" in await page.eval(f"{ERROR}.textContent")
        assert await page.wait_for(IDLE, 5)
        # The microphone goes away mid-session (its track ends, as when it is unplugged; the
        # event is dispatched here, the fake device cannot be unplugged): the page stops and
        # says so, and the server releases the session.
        await page.eval(KEEP_MIC)
        await start_and_play(page, ctx)
        await page.eval("window.mic.getAudioTracks()[0].dispatchEvent(new Event('ended')); 1")
        await page.wait_for(f"!{ERROR}.hidden", 10)
        assert "microphone stopped" in await page.eval(f"{ERROR}.textContent")
        assert await page.wait_for(IDLE, 5)
        await wait_server(ctx, 0)
        # A new start clears the message.
        await start_and_play(page, ctx)
        await page.eval(click("stop"))
        await wait_server(ctx, 0)


async def test_a_server_the_browser_cannot_reach_says_so_and_frees_its_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Signalling works but no media path does (as behind a firewall without TURN): here the
    server's ICE agent ignores the browser's connectivity checks. The page stops with a message
    that names the fix (--ice-server) instead of "lost", and the server's connect timeout
    frees the admission slot."""
    import aioice.ice

    import server.webrtc

    monkeypatch.setattr(aioice.ice.Connection, "request_received", lambda *args, **kw: None)
    monkeypatch.setattr(server.webrtc, "CONNECT_TIMEOUT_S", 18.0)
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    ctx = app[CTX]
    async with browser_page(app, tmp_path / "profile", FAKE_MEDIA) as b:
        page = b.page
        await page.wait_for(READY)
        await page.eval(click("start"))
        await wait_server(ctx, 1)  # admitted: the offer was answered
        await page.wait_for(f"{STATUS}.startsWith('connecting')", 10)
        await page.wait_for(f"!{ERROR}.hidden", 40)  # Chromium gives up after about 15 s
        message = await page.eval(f"{ERROR}.textContent")
        assert "Could not reach the server's media port" in message and "--ice-server" in message
        assert await page.wait_for(IDLE, 5)
        assert not ctx.engine.sessions  # never connected: no engine session was opened
        await wait_server(ctx, 0, 30)


def set_dial(name: str, value: float) -> str:
    return (f"(el => {{ el.value = {value}; el.dispatchEvent(new Event('input')); }})"
            f"(document.querySelector('[data-motion={name}]'))")  # fmt: skip


async def test_motion_dials_and_record(tmp_path: Path) -> None:
    """The Motion dials go with the offer and, moved during a session, reach it at once.
    Record during a session, then Stop: the page offers a WebM of the received stream (the
    avatar's video and the returned audio), which decodes to a few seconds of both."""
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    ctx = app[CTX]
    async with browser_page(app, tmp_path / "profile", FAKE_MEDIA) as b:
        page = b.page
        await page.wait_for(READY)
        await page.eval(set_dial("gestures", 0))
        await start_and_play(page, ctx)
        (session,) = ctx.engine.sessions
        assert session.motion == MotionControls(gestures=0.0)
        await page.eval(set_dial("head", 0.5))
        for _ in range(100):
            if session.motion == MotionControls(head=0.5, gestures=0.0):
                break
            await asyncio.sleep(0.1)
        assert session.motion == MotionControls(head=0.5, gestures=0.0)
        assert await page.eval("document.querySelector('[data-motion=head]')"
                               ".nextElementSibling.textContent") == "0.5"  # fmt: skip
        await page.eval(click("record"))
        assert await page.eval("document.getElementById('record').textContent") == (
            "Stop recording"
        )
        await asyncio.sleep(3)
        await page.eval(click("stop"))  # stopping the session ends the recording too
        link = await page.wait_for(
            "!document.getElementById('recording').hidden && document.getElementById('download')"
            ".textContent"
        )
        assert link.startswith("Download the recording (")
        data = await page.eval(
            "(async () => { const b = await (await fetch(document.getElementById('download')"
            ".href)).arrayBuffer(); let s = ''; for (const x of new Uint8Array(b)) "
            "s += String.fromCharCode(x); return btoa(s); })()"
        )
        await wait_server(ctx, 0)
    webm = tmp_path / "recording.webm"
    webm.write_bytes(base64.b64decode(data))
    with av.open(str(webm)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
        frames = list(c.decode(c.streams.video[0], c.streams.audio[0]))
    video = [f for f in frames if isinstance(f, av.VideoFrame)]
    audio = sum(f.samples for f in frames if isinstance(f, av.AudioFrame))
    assert (video[0].width, video[0].height) == (128, 128)
    assert video[-1].to_ndarray(format="rgb24").mean() > 40  # the avatar, not a black frame
    assert audio > 48000  # > 1 s of the returned audio (Opus at 48 kHz)
    assert len(video) >= 25  # ≥ 1 s of the avatar at 25 fps (3 s were recorded)
    assert float(video[-1].time - video[0].time) > 1.5


def lan_address() -> str | None:
    """A non-loopback IPv4 address of this machine: pages served there are not a secure
    context, as for a user on another machine without https."""
    import ifaddr

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                return ip.ip
    return None


async def test_speak_a_file_without_a_microphone(tmp_path: Path) -> None:
    """Speak a file: the page decodes an audio file and sends it as the session's audio (no
    microphone is opened), the server hears speech in it, and a file that is not audio gets a
    message while the session goes on. Served on a LAN address over plain http (where the
    browser has no microphone API at all), Start says what to do and the file still works."""
    host = lan_address() or "127.0.0.1"
    app = make_app(ServerSettings(host=host, port=0, driver="procedural", frame_size=128))
    ctx = app[CTX]
    args = ("--autoplay-policy=no-user-gesture-required", "--allow-loopback-in-peer-connection",
            "--disable-quic")  # fmt: skip
    async with browser_page(app, tmp_path / "profile", args, host=host) as b:
        page = b.page
        await page.wait_for(READY)
        if await page.eval("window.isSecureContext"):  # no LAN address: localhost is secure
            await page.eval("navigator.mediaDevices.getUserMedia = () => Promise.reject("
                            "new Error('the microphone was asked for')); 1")  # fmt: skip
        else:
            await page.eval(click("start"))
            await page.wait_for(f"!{ERROR}.hidden && {IDLE}", 10)
            assert "only on https or localhost" in await page.eval(f"{ERROR}.textContent")
        await choose_file(page, "#speech-file", SPEECH)
        await page.wait_for(PLAYING)
        assert "speaking speech_sample.wav (" in await page.eval(STATUS)
        await page.wait_for(f"{STATUS}.includes(' · speech')", 20)  # the server's VAD
        (session,) = ctx.engine.sessions
        assert session.stats.audio_in_s > 0.2  # the file, from the first frame on
        await choose_file(page, "#speech-file", PHOTO)
        await page.wait_for(f"!{ERROR}.hidden", 10)
        assert "not an audio file" in await page.eval(f"{ERROR}.textContent")
        assert await page.eval(PLAYING) and len(ctx.engine.sessions) == 1
        # A second file mid-session takes over from the first; when it ends, the page is
        # speaking nothing (the first does not come back).
        short = tmp_path / "short.wav"
        write_wav(short, load_audio(SPEECH)[: 16000 * 3 // 2], 16000)
        await choose_file(page, "#speech-file", short)
        await page.wait_for(f"{STATUS}.includes('speaking short.wav (1.5 s)')", 10)
        await page.wait_for(f"!{STATUS}.includes('speaking')", 10)
        assert await page.eval(PLAYING)
        await page.eval(click("stop"))
        await wait_server(ctx, 0)
        assert await page.eval(IDLE)


async def choose_file(page: DevTools, selector: str, path: Path) -> None:
    root = (await page.call("DOM.getDocument"))["root"]["nodeId"]
    node = await page.call("DOM.querySelector", nodeId=root, selector=selector)
    await page.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node["nodeId"])
