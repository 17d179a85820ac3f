"""The page in headless Firefox (WebDriver BiDi, fake microphone tone) against an in-process
server: WebRTC to aiortc works on a network address with Firefox's default hiding of its
addresses behind mDNS names, and on localhost when Firefox is set to allow loopback; with its
default settings on localhost the page says which settings to change.

The tone cannot test lip sync (Chromium's tests do, with speech); these check that Firefox's
offer, codecs and data channel work with the server and that the page's measurements run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.app import CTX, make_app
from server.settings import ServerSettings
from tests.bidi import FAKE_MEDIA_PREFS, FIREFOX, firefox_page
from tests.devtools import report_route
from tests.test_browser_controls import lan_address

pytestmark = [
    pytest.mark.slow,
    pytest.mark.realtime,
    pytest.mark.skipif(FIREFOX is None, reason="needs firefox-esr (setup.sh --dev)"),
]
SECONDS = 4
ERROR = "document.getElementById('error')"
# Allow getUserMedia on plain http (a network address without https, as in the other tests).
INSECURE_MEDIA = {
    "media.devices.insecure.enabled": True,
    "media.getusermedia.insecure.enabled": True,
}
LOOPBACK = {
    "media.peerconnection.ice.loopback": True,
    "media.peerconnection.ice.obfuscate_host_addresses": False,
}


async def measured_session(tmp_path: Path, host: str, prefs: dict) -> dict:
    """The page's test run (?test=1): a session of SECONDS, measured by the page itself."""
    app = make_app(ServerSettings(host=host, port=0, driver="procedural", frame_size=128))
    got = report_route(app)

    path = f"/?test=1&seconds={SECONDS}&report=/report"
    async with firefox_page(app, tmp_path / "profile", prefs, host, path):
        result = await asyncio.wait_for(got, 60 + SECONDS)
        ctx = app[CTX]
        for _ in range(100):  # the page hung up: the server frees everything
            if not ctx.admission.active and not ctx.engine.sessions:
                break
            await asyncio.sleep(0.1)
        assert not ctx.admission.active and not ctx.engine.sessions
    return result


def check_streamed(report: dict) -> None:
    assert "error" not in report, report.get("error")
    assert report["connection_state"] == "connected"
    assert report["video_size"] == [128, 128]
    assert report["frames_decoded"] >= 12 * SECONDS  # 25 fps sent; decoding may start late
    assert len(report["frames"]) >= 8 * SECONDS  # painted frames the page measured
    assert report["audio_samples_received"] >= 48000 * (SECONDS - 2)


async def test_firefox_streams_from_a_network_address_through_mdns(tmp_path: Path) -> None:
    host = lan_address()
    if host is None:
        pytest.skip("no non-loopback address on this machine")
    prefs = {**FAKE_MEDIA_PREFS, **INSECURE_MEDIA}  # Firefox hides its addresses (mDNS)
    check_streamed(await measured_session(tmp_path, host, prefs))


async def test_firefox_streams_on_localhost_when_allowed_loopback(tmp_path: Path) -> None:
    check_streamed(await measured_session(tmp_path, "127.0.0.1", {**FAKE_MEDIA_PREFS, **LOOPBACK}))


async def test_firefox_on_localhost_by_default_is_told_what_to_change(tmp_path: Path) -> None:
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    async with firefox_page(app, tmp_path / "profile") as (page, _):
        await page.wait_for("document.body.dataset.ready === '1'")
        await page.eval("document.getElementById('start').click()")
        await page.wait_for(f"!{ERROR}.hidden", 45)
        message = await page.eval(f"{ERROR}.textContent")
        assert "media.peerconnection.ice.loopback" in message, message
        assert await page.eval("document.getElementById('status').textContent") == "idle"
