"""Driving the page in headless Chromium over the DevTools protocol, against an in-process
server: :func:`browser_page` starts both and hands over the page."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

CHROMIUM = Path("/usr/bin/chromium")
OPTIONS = "[...document.getElementById('avatar').options].map((o) => [o.value, o.text])"
# The current page (not one being replaced) has loaded its avatar list.
READY = "!window.stale && document.body.dataset.ready === '1'"


class PagePolling(abc.ABC):
    """``wait_for`` over a client's ``eval``."""

    @abc.abstractmethod
    async def eval(self, expression: str) -> object:
        """The value of ``expression`` evaluated in the page."""

    async def wait_for(self, expression: str, seconds: float = 60) -> object:
        """Poll until ``expression`` is truthy (a page being replaced answers with an error)."""
        for _ in range(int(seconds * 10)):
            with contextlib.suppress(RuntimeError):
                if value := await self.eval(expression):
                    return value
            await asyncio.sleep(0.1)
        raise TimeoutError(expression)


def report_route(app: web.Application) -> asyncio.Future:
    """``POST /report`` on ``app``: the future gets the first JSON body posted (the page's
    measurements in its test mode)."""
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def report(request: web.Request) -> web.Response:
        if not got.done():
            got.set_result(await request.json())
        return web.json_response({"ok": True})

    app.router.add_post("/report", report)
    return got


class DevTools(PagePolling):
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

    async def reload(self, before: str = "") -> None:
        """Reload the page after running ``before`` (READY tells the new page from the old)."""
        await self.eval(f"{before}; window.stale = true; setTimeout(() => location.reload()); 1")


@dataclass
class BrowserPage:
    page: DevTools
    http: aiohttp.ClientSession
    base: str  # the server's URL
    app: web.Application


async def _page_devtools(profile: Path, http: aiohttp.ClientSession) -> DevTools:
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


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` on a free port of ``host``; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield f"http://{host}:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def browser_process(command: Sequence[str], log: Path | None = None) -> AsyncIterator[None]:
    """Run a browser in its own process group (its output into ``log`` if given); it and its
    helpers are killed on exit."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(log.open("wb")) if log else subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            yield
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 30)


@contextlib.asynccontextmanager
async def browser_page(
    app: web.Application,
    profile: Path,
    chromium_args: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> AsyncIterator[BrowserPage]:
    """Serve ``app`` on a free port of ``host`` and open its page in headless Chromium
    (``profile`` is the browser's user-data folder); everything is torn down on exit."""
    async with serve(app, host) as base:
        command = (
            str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", *chromium_args, f"{base}/",
        )  # fmt: skip
        async with browser_process(command), aiohttp.ClientSession() as http:
            page = await _page_devtools(profile, http)
            try:
                yield BrowserPage(page, http, base, app)
            finally:
                await page.ws.close()
