"""The Python websocket client when the server goes away mid-stream: a clear error, exit code
1 and no output file, instead of a silently truncated video."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestServer

from clients.ws.__main__ import main_async, parse_args
from clients.ws.client import ServerError, run_client, wav_chunks
from mmgt.audio import write_wav
from server.protocol import HEADER, KIND_VIDEO_JPEG


def _vanishing_server(close_code: int) -> web.Application:
    """Answers ``start``, sends two frames, then closes without ``done``."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        start = json.loads((await ws.receive()).data)
        assert start["type"] == "start"
        await ws.send_str(json.dumps({"type": "ready", "session": "s"}))
        for index in range(2):
            await ws.send_bytes(HEADER.pack(KIND_VIDEO_JPEG, index, index) + b"\xff\xd8")
        await ws.close(code=close_code, message=b"gone")
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


@pytest.mark.parametrize(
    ("code", "said"),
    [(WSCloseCode.GOING_AWAY, "the server is stopping"), (WSCloseCode.INTERNAL_ERROR, "1011")],
)
async def test_an_early_close_is_an_error_not_a_short_video(code, said):
    async with TestServer(_vanishing_server(code)) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        chunks = wav_chunks(np.zeros(16000, np.float32), 16000, realtime=False)
        with pytest.raises(ServerError, match=f"before the end.*{said}.*after 2 frames"):
            await run_client(url, chunks, sample_rate=16000, pace="asap")


async def test_the_cli_writes_nothing_when_the_stream_is_cut(tmp_path):
    wav, out = tmp_path / "in.wav", tmp_path / "out.mp4"
    write_wav(wav, np.zeros(16000, np.float32), 16000)
    async with TestServer(_vanishing_server(WSCloseCode.GOING_AWAY)) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        args = parse_args(["--wav", str(wav), "--url", url, "--out", str(out), "--fast"])
        with pytest.raises(ServerError):
            await main_async(args, None)
    assert list(tmp_path.iterdir()) == [wav]
