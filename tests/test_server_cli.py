"""python -m server: argument handling and the --smoke self-check, as a user runs them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from mmgt.errors import InputError
from server.__main__ import main as server_main
from server.__main__ import parse_args, remote_hints, settings_from
from server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[1]


def test_settings_from_the_command_line():
    s = settings_from(parse_args([
        "--host", "0.0.0.0", "--port", "9000", "--max-sessions", "2",
        "--ice-server", "turn:turn.example:3478", "--ice-username", "u", "--ice-credential", "p",
        "--allow-origin", "https://app.example", "--hop", "2", "--lookahead", "1",
    ]))  # fmt: skip
    assert (s.host, s.port, s.max_sessions) == ("0.0.0.0", 9000, 2)
    assert s.ice_servers == ({"urls": "turn:turn.example:3478", "username": "u",
                              "credential": "p"},)  # fmt: skip
    assert s.allowed_origins == ("https://app.example",)
    assert (s.stream.hop_frames, s.stream.lookahead_frames) == (2, 1)
    assert s.scheme == "http" and settings_from(parse_args([])).ice_servers == ()
    with pytest.raises(InputError, match="--cert and --key go together"):
        settings_from(parse_args(["--cert", "c.pem"]))
    s = settings_from(parse_args(["--avatar", "hopper=h.jpg", "--avatar", "ada.2=/x/a=b.png"]))
    assert s.avatars == (("hopper", "h.jpg"), ("ada.2", "/x/a=b.png"))


@pytest.mark.slow
def test_smoke_runs_one_session_end_to_end():
    proc = subprocess.run(
        [sys.executable, "-m", "server", "--smoke", "--driver", "procedural", "--size", "256"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke: OK" in proc.stdout
    assert "latency p50" in proc.stdout
    frames = int(re.search(r"smoke: (\d+) frames for 6.00 s", proc.stdout).group(1))
    # 6 s at 25 fps; the client streams in real time, so on a loaded machine a late chunk can
    # let the session insert a few idle (silent) frames first, which is correct behaviour.
    assert 148 <= frames <= 151 + 10
    # The browser's path too: WebRTC with aiortc as the browser, video and voice back.
    webrtc = re.search(
        r"smoke: WebRTC: (\d+) frames in 5 s, voice back at (-?\d+) dBFS", proc.stdout
    )
    assert webrtc and int(webrtc.group(1)) >= 63 and int(webrtc.group(2)) > -50, proc.stdout


@pytest.mark.slow
def test_sigterm_closes_live_sessions_and_exits_0():
    """systemd, Docker and ``kill`` stop servers with SIGTERM: live websocket sessions are
    closed as "going away" (1001) and the process exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", "0", "--driver", "procedural", "--size", "128"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        ready = proc.stdout.readline()
        url = re.search(r"http://(\S+)/", ready).group(1)

        async def live_session_at_sigterm() -> tuple[int | None, int]:
            async with (
                aiohttp.ClientSession() as http,
                http.ws_connect(f"ws://{url}/ws") as ws,
            ):
                await ws.send_str(json.dumps({"type": "start", "sample_rate": 16000}))
                assert (await ws.receive_json(timeout=60))["type"] == "ready"
                await ws.send_bytes(bytes(2 * 16000))  # 1 s of silence
                frames = 0
                while frames < 3:
                    msg = await ws.receive(timeout=60)
                    frames += msg.type == aiohttp.WSMsgType.BINARY
                proc.send_signal(signal.SIGTERM)
                async for _ in ws:  # until the server closes the connection
                    pass
                return ws.close_code, frames

        code, frames = asyncio.run(live_session_at_sigterm())
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert code == aiohttp.WSCloseCode.GOING_AWAY and frames == 3
    assert proc.returncode == 0, out
    assert "SIGTERM: closing sessions and stopping" in out


def test_unusable_tls_files_and_settings_are_one_line_errors(tmp_path, capsys):
    """Refused before any model loads or port opens: exit 2 and a line naming the problem."""
    missing = str(tmp_path / "cert.pem")
    assert server_main(["--cert", missing, "--key", missing]) == 2
    assert f"cannot use --cert {missing}" in capsys.readouterr().err
    (tmp_path / "cert.pem").write_text("not a certificate")
    assert server_main(["--cert", missing, "--key", missing]) == 2
    assert "PEM" in capsys.readouterr().err
    assert server_main(["--driver", "smga", "--steps", "0", "--port", "0"]) == 2
    assert "SMGA steps must be an integer in 1..1000" in capsys.readouterr().err
    for bad, message in (
        (["--size", "32768"], "--size must be a multiple of 64 in 64…2048, got 32768"),
        (["--size", "100"], "--size must be a multiple of 64"),
        (["--hop", "0"], "--hop must be at least 1, got 0"),
        (["--lookahead", "-1"], "--lookahead must be at least 0"),
        (["--max-sessions", "0"], "--max-sessions must be at least 1"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--avatar", "hopper"], "--avatar takes NAME=PHOTO, got 'hopper'"),
        (["--avatar", "my photo=a.jpg"], "avatar name 'my photo': use 1–40 letters"),
        (["--avatar", "default=a.jpg"], "other than 'default'"),
        (["--avatar", "u0123456789abcdef=a.jpg"], "upload ids"),
        (["--avatar", "a=x.jpg", "--avatar", "a=y.jpg"], "--avatar a is given twice"),
        (["--cert", missing], "--cert and --key go together"),
    ):
        assert server_main(bad) == 2, bad
        assert message in capsys.readouterr().err, bad
    # A photo that cannot be used stops the start (after the models load), naming it.
    photo = tmp_path / "notes.txt"
    photo.write_text("not a photo")
    assert server_main(["--driver", "procedural", "--port", "0", "--avatar", f"ada={photo}"]) == 2
    assert f"--avatar ada={photo}: " in capsys.readouterr().err


def test_remote_hints_name_the_addresses_and_the_https_a_microphone_needs():
    assert remote_hints(ServerSettings(), 8080) == []
    assert remote_hints(ServerSettings(host="10.1.2.3", cert="c", key="k"), 9000) == [
        "  from other machines: https://10.1.2.3:9000/"
    ]
    every = remote_hints(ServerSettings(host="0.0.0.0"), 8080)
    assert "--cert and --key" in every[-1]
    assert all(h.startswith("  from other machines: http://") for h in every[:-1])
    assert not any("127.0.0.1" in h for h in every)
