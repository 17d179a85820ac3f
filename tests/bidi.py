"""Driving the page in headless Firefox over WebDriver BiDi (Firefox's remote protocol; it no
longer speaks the DevTools protocol), against an in-process server: :func:`firefox_page`
starts both and hands over the page."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import socket
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.devtools import PagePolling, browser_process, serve

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")

# A fake microphone (a tone) allowed without asking, media that may play unmuted at once, and
# nothing contacted in the background.
FAKE_MEDIA_PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "app.update.disabledForTesting": True,
    "network.captive-portal-service.enabled": False,
}


class Bidi(PagePolling):
    """A minimal WebDriver BiDi client for one browsing context."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids, self.context = ws, itertools.count(1), ""

    async def call(self, method: str, **params: object) -> dict:
        msg_id = next(self.ids)
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; answers carry their command's id
            msg = json.loads((await self.ws.receive(timeout=60)).data)
            if msg.get("id") == msg_id:
                if msg.get("type") == "error":
                    raise RuntimeError(f"{method}: {msg.get('error')}: {msg.get('message')}")
                return msg["result"]

    async def eval(self, expression: str) -> object:
        """The JSON value of ``expression`` (awaited if it is a promise)."""
        got = await self.call(
            "script.evaluate",
            expression=f"(async () => JSON.stringify(await ({expression})))()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if got["type"] != "success":
            raise RuntimeError(f"{expression}: {got.get('exceptionDetails', got)}")
        return json.loads(got["result"].get("value", "null"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_profile(profile: Path, prefs: Mapping[str, object]) -> None:
    profile.mkdir(parents=True)
    lines = (f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())
    (profile / "user.js").write_text("".join(lines))


@contextlib.asynccontextmanager
async def firefox_page(
    app: web.Application,
    profile: Path,
    prefs: Mapping[str, object] = FAKE_MEDIA_PREFS,
    host: str = "127.0.0.1",
    path: str = "/",
) -> AsyncIterator[tuple[Bidi, str]]:
    """Serve ``app`` on ``host`` and open ``path`` (the page by default) in headless Firefox
    with ``prefs`` (written to the new ``profile`` folder); yields the page and the base URL."""
    _write_profile(profile, prefs)
    port = _free_port()
    command = (FIREFOX, "--headless", "--no-remote", "--profile", str(profile),
               f"--remote-debugging-port={port}", "about:blank")  # fmt: skip
    async with serve(app, host) as base, browser_process(command):
        async with aiohttp.ClientSession() as http:
            for _ in range(300):  # until Firefox listens
                try:
                    ws = await http.ws_connect(f"ws://127.0.0.1:{port}/session", max_msg_size=0)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            else:
                raise TimeoutError("Firefox did not open its remote protocol port")
            page = Bidi(ws)
            try:
                await page.call("session.new", capabilities={})
                page.context = (await page.call("browsingContext.getTree"))["contexts"][0][
                    "context"
                ]
                await page.call("browsingContext.navigate", context=page.context,
                                url=base + path, wait="complete")  # fmt: skip
                yield page, base
            finally:
                with contextlib.suppress(Exception):
                    await page.call("session.end")
                await ws.close()
