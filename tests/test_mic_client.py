"""`python -m clients.ws --mic` against a real server, with a PulseAudio virtual microphone.

A private PulseAudio daemon gets a null sink ("speaker") and a virtual source ("mic") fed by
its monitor: speech played into the speaker with `paplay` is what the client's microphone
(PortAudio → ALSA → PulseAudio, as on a desktop) records. Skipped where PulseAudio is missing
(`./scripts/setup.sh --dev` installs it).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time

import av
import numpy as np
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from clients.ws.__main__ import main as client_main
from mmgt.audio import load_audio, write_wav
from mmgt.avatar import BUNDLED_AVATAR
from server.app import make_app
from server.settings import ServerSettings
from tests.ws_helpers import assert_lips_follow_audio, ws_url

RATE = 16000


@pytest.fixture(scope="module")
def pulse(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment variables that point PortAudio and paplay at a private PulseAudio."""
    if not (shutil.which("pulseaudio") and shutil.which("paplay")):
        pytest.skip("needs pulseaudio and paplay (./scripts/setup.sh --dev installs them)")
    run = tmp_path_factory.mktemp("pulse")
    sock = run / "native"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "HOME": str(run),
           "PULSE_SERVER": f"unix:{sock}"}  # fmt: skip
    daemon = subprocess.Popen(
        ["pulseaudio", "--daemonize=no", "-n", "--exit-idle-time=-1", "--disallow-exit",
         f"--load=module-native-protocol-unix socket={sock} auth-anonymous=1",
         "--load=module-null-sink sink_name=speaker",
         "--load=module-virtual-source source_name=mic master=speaker.monitor"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
            assert daemon.poll() is None, "pulseaudio exited"
            assert time.monotonic() < deadline, "pulseaudio did not start"
            time.sleep(0.1)
        for cmd in (["set-default-sink", "speaker"], ["set-default-source", "mic"]):
            subprocess.run(["pactl", *cmd], env=env, check=True)
        yield env
    finally:
        daemon.terminate()
        daemon.wait(10)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client():
    app = make_app(ServerSettings(driver="procedural", frame_size=256, max_sessions=2))
    async with TestClient(TestServer(app)) as c:
        yield c


def decode(path: os.PathLike[str]) -> tuple[list[np.ndarray], np.ndarray, int]:
    """Frames (RGB), mono audio and its rate of an mp4."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray().mean(0) for f in c.decode(audio=0)])
    return frames, audio, rate


@pytest.mark.asyncio(loop_scope="module")
async def test_mic_client_speaks_through_the_server(client, pulse, tmp_path):
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 5 * RATE]
    played = tmp_path / "played.wav"
    write_wav(played, np.concatenate([np.zeros(RATE // 2, np.float32), speech]), RATE)
    out = tmp_path / "mic.mp4"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "clients.ws", "--url", ws_url(client), "--mic", "--seconds", "6",
        "--audio-rate", str(RATE), "--out", str(out),
        env=pulse, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    log = []
    async for line in proc.stderr:  # start the speech once the microphone is open
        log.append(line.decode())
        if line.startswith(b"recording:"):
            break
    player = await asyncio.create_subprocess_exec("paplay", str(played), env=pulse)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 90)
    await player.wait()
    log.append(stderr.decode())
    assert proc.returncode == 0, "".join(log)
    assert stdout.decode().strip().endswith(str(out)) and "recorded 6.0 s" in "".join(log)

    frames, audio, rate = decode(out)
    assert rate == RATE and len(frames) >= 6 * 25
    # What came back is the speech the microphone heard, and the lips follow it.
    envelope = np.sqrt((audio[: len(frames) * 640].reshape(-1, 640) ** 2).mean(1))
    assert (envelope > 0.05).sum() > 25, "no speech came back"
    await assert_lips_follow_audio(client, frames, audio)


def test_mic_errors_are_clear(capsys):
    assert client_main(["--mic", "--device", "no such microphone"]) == 1
    assert "error: no microphone 'no such microphone'" in capsys.readouterr().err


async def test_a_microphone_that_stops_delivering_ends_the_recording(monkeypatch, capsys):
    """A microphone unplugged mid-recording stops calling back: the recording ends with a
    message and keeps what was heard (it does not wait for Ctrl+C forever)."""
    import threading
    import types

    class VanishingStream:  # delivers 10 blocks of 20 ms, then nothing (the device is gone)
        def __init__(self, rate, blocksize, callback, **_):  # noqa: ANN001, ANN003
            self.rate, self.blocksize, self.callback = rate, blocksize, callback

        def __enter__(self):  # noqa: ANN204
            def deliver() -> None:
                for _ in range(10):
                    self.callback(bytes(2 * self.blocksize), self.blocksize, None, None)
                    time.sleep(0.02)

            threading.Thread(target=deliver, daemon=True).start()
            return self

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            return False

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(
        RawInputStream=VanishingStream))  # fmt: skip
    from clients.ws.__main__ import mic_chunks

    chunks = [c async for c in mic_chunks(None, RATE, 0, asyncio.Event(), silent_s=0.5)]
    assert len(chunks) == 10 and all(len(c) == 640 for c in chunks)
    err = capsys.readouterr().err
    assert "stopped delivering audio" in err and "recorded 0.2 s" in err
