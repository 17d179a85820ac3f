"""The Python websocket client when the server goes away mid-stream (a clear error, exit code
1 and no output file, instead of a silently truncated video), and against an https server with
a self-signed certificate."""

from __future__ import annotations

import datetime
import ipaddress
import json
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clients.ws.__main__ import (
    CertificateError,
    client_tls,
    connection_error,
    main_async,
    parse_args,
)
from clients.ws.client import ServerError, run_client, upload_avatar, wav_chunks
from mmgt.audio import write_wav
from server.__main__ import tls_context
from server.app import make_app
from server.protocol import HEADER, KIND_VIDEO_JPEG
from server.settings import ServerSettings


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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A one-day certificate for 127.0.0.1 and its key, as `openssl req -x509` makes them."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


async def test_a_wss_server_with_a_self_signed_certificate(tmp_path):
    """The README's https set-up (`--cert/--key` with a self-signed certificate): the client
    refuses the unknown certificate with a message saying what to pass, and speaks through
    the server with `--cafile` (the server's certificate) or `--insecure`."""
    cert, key = self_signed(tmp_path)
    tls = tls_context(ServerSettings(cert=str(cert), key=str(key)))
    runner = web.AppRunner(make_app(ServerSettings(port=0, driver="procedural", frame_size=128)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    url = f"wss://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"

    def speak(**tls_option: object):  # noqa: ANN202
        chunks = wav_chunks(np.zeros(8000, np.float32), 16000, realtime=False)
        return run_client(url, chunks, sample_rate=16000, pace="asap", **tls_option)

    try:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as refused:
            await speak()
        assert "--cafile" in connection_error(url, refused.value)
        for flags in (["--cafile", str(cert)], ["--insecure"]):
            args = parse_args(["--wav", "x.wav", "--url", url, *flags])
            got = await speak(ssl=client_tls(args))
            assert len(got.video) >= 12 and got.events[-1]["type"] == "done"
    finally:
        await runner.cleanup()
    with pytest.raises(CertificateError, match="cannot use --cafile"):
        client_tls(parse_args(["--wav", "x.wav", "--cafile", str(tmp_path / "missing.pem")]))


async def test_no_video_back_writes_nothing_and_says_so(tmp_path, capsys):
    """A session that ends before its first frame (e.g. interrupted at once) has nothing to
    write: exit code 1 and a message, not a traceback or an empty file."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # start
        await ws.send_str(json.dumps({"type": "ready", "session": "s"}))
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["type"] == "finish":
                await ws.send_str(json.dumps({"type": "done", "frames": 0}))
                await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    wav, out = tmp_path / "in.wav", tmp_path / "out.mp4"
    write_wav(wav, np.zeros(1600, np.float32), 16000)
    async with TestServer(app) as server:
        url = f"ws://{server.host}:{server.port}/ws"
        args = parse_args(["--wav", str(wav), "--url", url, "--out", str(out), "--fast"])
        assert await main_async(args, None) == 1
    assert "no video came back" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [wav]


async def test_upload_waits_out_a_busy_server_and_reports_plain_refusals(tmp_path):
    """503 + Retry-After (the server is preparing other photos) is tried again; a refusal whose
    body is not JSON (aiohttp's own 413) is reported with its text, not a JSON traceback."""
    answers = [
        web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"}),
        web.json_response({"error": "busy"}, status=503, headers={"Retry-After": "0"}),
        web.json_response({"id": "u123"}),
        web.Response(status=413, text="Request Entity Too Large"),
    ]

    async def avatars(request: web.Request) -> web.Response:
        await request.read()
        return answers.pop(0)

    app = web.Application()
    app.router.add_post("/avatars", avatars)
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"\xff\xd8\xff photo")
    async with TestServer(app) as server, aiohttp.ClientSession() as http:
        base = f"http://{server.host}:{server.port}"
        assert await upload_avatar(http, base, photo) == "u123"
        with pytest.raises(ServerError, match=r"upload refused \(413\): Request Entity Too Large"):
            await upload_avatar(http, base, photo)
    assert not answers


def test_an_unusable_local_file_is_one_line_and_exit_2(tmp_path, capsys):
    """A bad --wav is refused before any connection, as ``mmgt render`` refuses it."""
    from clients.ws.__main__ import main

    bad = tmp_path / "speech.wav"
    bad.write_bytes(b"RIFF garbage")
    assert main(["--wav", str(bad), "--url", "ws://127.0.0.1:9/ws"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: audio file") and "Traceback" not in err
