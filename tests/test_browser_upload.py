"""The page's photo upload in headless Chromium, driven over the DevTools protocol: the photo
is chosen in the real file input, prepared by the server and offered as "My photo"; the server
lists only the bundled avatar to everyone, this browser remembers its own upload across a
reload, and a browser without that memory is not offered it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from server.app import make_app
from server.settings import ServerSettings
from tests.test_browser import CHROMIUM

PHOTO = Path(__file__).parent / "data" / "grace_hopper.jpg"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (setup.sh --dev)"),
]


class DevTools:
    """A minimal Chrome DevTools protocol client for one page."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    async def call(self, method: str, **params: object) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; answers carry their call's id
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def eval(self, expression: str) -> object:
        got = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                              returnByValue=True)  # fmt: skip
        return got["result"].get("value")

    async def wait_for(self, expression: str, seconds: float = 60) -> object:
        """Poll until ``expression`` is truthy (a page being replaced answers with an error)."""
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(RuntimeError):
                if value := await self.eval(expression):
                    return value
            await asyncio.sleep(0.1)
        raise TimeoutError(expression)

    async def reload(self, before: str = "") -> None:
        """Reload the page after running ``before`` (READY tells the new page from the old)."""
        await self.eval(f"{before}; window.stale = true; setTimeout(() => location.reload()); 1")


OPTIONS = "[...document.getElementById('avatar').options].map((o) => [o.value, o.text])"
# The current page (not one being replaced) has loaded its avatar list.
READY = "!window.stale && document.body.dataset.ready === '1'"


async def page_devtools(profile: Path, http: aiohttp.ClientSession) -> DevTools:
    for _ in range(300):  # Chromium writes its DevTools port into the profile when ready
        port_file = profile / "DevToolsActivePort"
        if port_file.is_file() and port_file.read_text().strip():
            break
        await asyncio.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
        page = next(t for t in await resp.json() if t["type"] == "page")
    ws = await http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
    return DevTools(ws)


async def test_uploaded_photo_is_offered_to_its_browser_only(tmp_path: Path) -> None:
    app = make_app(ServerSettings(port=0, driver="procedural", frame_size=128))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    profile = tmp_path / "profile"
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", f"{base}/",
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:
            page = await page_devtools(profile, http)
            assert await page.wait_for(f"{READY} && {OPTIONS}") == [["default", "Bundled avatar"]]
            root = (await page.call("DOM.getDocument"))["root"]["nodeId"]
            node = await page.call("DOM.querySelector", nodeId=root, selector="#photo")
            await page.call("DOM.setFileInputFiles", files=[str(PHOTO)], nodeId=node["nodeId"])
            options = await page.wait_for(f"{OPTIONS}.length === 2 && {OPTIONS}")
            (public, _), (upload, label) = options
            assert public == "default" and label.startswith("My photo")
            assert await page.eval("document.getElementById('avatar').value") == upload
            assert await page.eval("document.getElementById('error').hidden") is True
            # The server lists only the bundled avatar; the upload works by its id.
            async with http.get(f"{base}/avatars") as resp:
                assert (await resp.json())["avatars"] == ["default"]
            async with http.get(f"{base}/avatars/{upload}") as resp:
                assert resp.status == 200
            # This browser remembers its upload across a reload …
            await page.reload()
            again = await page.wait_for(f"{READY} && {OPTIONS}")
            assert [value for value, _ in again] == ["default", upload]
            # … and a browser without that memory is offered the bundled avatar only.
            await page.reload(before="localStorage.clear()")
            fresh = await page.wait_for(f"{READY} && {OPTIONS}")
            assert [value for value, _ in fresh] == ["default"]
            await page.ws.close()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 30)
        await runner.cleanup()
