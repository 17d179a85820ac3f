"""The ``mmgt`` command line end to end: render, debug outputs, errors, reproducibility."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmgt import offline
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.cli import main

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory) -> Path:
    """2.4 s of the bundled sample (speech), stereo 44.1 kHz, to exercise resampling."""
    data, sr = sf.read(SPEECH, dtype="float32")
    clip = data[int(0.4 * sr) : int(2.8 * sr)]
    stereo = np.stack([clip, 0.5 * clip], axis=1)
    import soxr

    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    sf.write(path, soxr.resample(stereo, sr, 44100), 44100)
    return path


def _streams(path: Path) -> dict:
    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        info = {
            "vcodec": v.codec_context.name,
            "acodec": a.codec_context.name,
            "fps": v.average_rate,
            "size": (v.width, v.height),
            "frames": frames,
        }
    with av.open(str(path)) as c:
        info["audio_s"] = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    return info


def test_render_bundled_avatar(tmp_path, short_speech, capsys):
    out = tmp_path / "out" / "talk.mp4"
    assert main(["render", "--audio", str(short_speech), "--out", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "driven by smga" in captured.err  # the shipped model is the default driver
    info = _streams(out)
    assert info["vcodec"] == "h264" and info["acodec"] == "aac"
    assert info["fps"] == 25 and info["size"] == (512, 512)
    assert len(info["frames"]) == math.ceil(2.4 * 16000 / 640)
    assert abs(info["audio_s"] - 2.4) < 0.06
    assert not list(out.parent.glob(".*"))  # no temporary files left


def test_notes_about_the_photo_are_printed(tmp_path, short_speech, capsys):
    """A face in profile: `render` says so before it works, `prepare-avatar` too; the bundled
    portrait gets no note."""
    profile = Path(__file__).parent / "data" / "camera.png"
    out = tmp_path / "profile.mp4"
    cmd = ["render", "--image", str(profile), "--audio", str(short_speech), "--size", "128", "-q"]
    assert main([*cmd, "--driver", "procedural", "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("mmgt render: note: the face is turned about") and out.is_file()
    assert main(["prepare-avatar", "--image", str(profile), "--out", str(tmp_path / "a")]) == 0
    assert "mmgt prepare-avatar: note: the face is turned" in capsys.readouterr().err
    assert main(["prepare-avatar", "--out", str(tmp_path / "b")]) == 0
    assert "note:" not in capsys.readouterr().err


def test_debug_outputs_and_other_size(tmp_path, short_speech):
    out = tmp_path / "dbg.mp4"
    assert (
        main(
            [
                "render",
                "--audio",
                str(short_speech),
                "--out",
                str(out),
                "--size",
                "256",
                "--debug",
                "-q",
            ]
        )
        == 0
    )
    sizes = {p.name: _streams(p)["size"] for p in tmp_path.glob("*.mp4")}
    assert sizes == {
        "dbg.mp4": (256, 256),
        "dbg.pose.mp4": (256, 256),
        "dbg.face.mp4": (256, 256),
        "dbg.lips.mp4": (256, 256),
        "dbg.masks.mp4": (256, 256),
        "dbg.side.mp4": (768, 256),
    }
    pose = _streams(tmp_path / "dbg.pose.mp4")["frames"][5]
    assert (pose.max(-1) > 200).mean() > 0.005 and (
        pose.max(-1) < 30
    ).mean() > 0.8  # a skeleton on black


def test_seed_reproducible(tmp_path, short_speech):
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.mp4"
        assert (
            main(
                [
                    "render",
                    "--audio",
                    str(short_speech),
                    "--out",
                    str(out),
                    "--size",
                    "128",
                    "--seed",
                    str(seed),
                    "-q",
                ]
            )
            == 0
        )
        outs.append(np.stack(_streams(out)["frames"]))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0].astype(int) - outs[2].astype(int)).max() > 10


def test_motion_dials_hold_the_photo_still(tmp_path, short_speech):
    """Every dial at 0: the video is the photo, still, while the speech plays; at 1 it moves."""
    common = ["render", "--audio", str(short_speech), "--size", "128", "-q"]
    still = ["--head-motion", "0", "--gestures", "0", "--mouth", "0", "--blinks", "0"]
    change = {}
    for name, dials in (("still", still), ("moving", [])):
        out = tmp_path / f"{name}.mp4"
        assert main([*common, "--out", str(out), *dials]) == 0
        frames = np.stack(_streams(out)["frames"]).astype(np.float32)
        change[name] = np.median(np.abs(frames - frames[-1]).mean(axis=(1, 2, 3)))
    assert change["still"] < 0.5 and change["moving"] > 4 * change["still"] + 1, change


def test_non_square_photo(tmp_path, short_speech):
    photo = np.asarray(Image.open(BUNDLED_AVATAR).convert("RGB"))
    wide = np.concatenate([np.full((512, 200, 3), 90, np.uint8), photo], axis=1)  # 712×512
    img = tmp_path / "wide.jpg"
    Image.fromarray(wide).save(img, quality=92)
    out = tmp_path / "wide.mp4"
    assert (
        main(
            [
                "render",
                "--image",
                str(img),
                "--audio",
                str(short_speech),
                "--out",
                str(out),
                "--size",
                "256",
                "-q",
            ]
        )
        == 0
    )
    assert _streams(out)["size"] == (256, 256)


@pytest.mark.parametrize(
    ("make", "flag", "message"),
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00garbage"), "--audio", "audio"),
        (lambda p: p.write_bytes(b""), "--audio", "audio"),
        (lambda p: p.write_text("hello"), "--image", "image"),
        (
            lambda p: Image.new("RGB", (300, 300), (40, 120, 200)).save(p, format="PNG"),
            "--image",
            "no person",
        ),
    ],
)
def test_bad_input_fails_cleanly(tmp_path, short_speech, capsys, make, flag, message):
    bad = tmp_path / "bad.bin"
    make(bad)
    out = tmp_path / "out.mp4"
    args = ["render", "--audio", str(short_speech), "--out", str(out), "-q", flag, str(bad)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmgt render: error:") and message in err.lower()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.bin"]


def test_interrupted_render_leaves_nothing(tmp_path, short_speech, monkeypatch):
    calls = {"n": 0}
    real = offline.render_pose

    def flaky(points, size):
        calls["n"] += 1
        if calls["n"] == 10:
            raise KeyboardInterrupt
        return real(points, size)

    monkeypatch.setattr(offline, "render_pose", flaky)
    out = tmp_path / "int.mp4"
    args = ["render", "--audio", str(short_speech), "--out", str(out), "--debug", "--size", "128"]
    assert main([*args, "-q"]) == 130
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sigterm_stops_a_render_and_leaves_nothing(tmp_path):
    """A job runner or ``kill`` stops a render with SIGTERM: the hidden partial files go too,
    and the exit code is 143 as for a shell-killed process."""
    data, sr = sf.read(SPEECH, dtype="float32")
    long_audio = tmp_path / "in" / "long.wav"
    long_audio.parent.mkdir()
    sf.write(long_audio, np.tile(data, 10), sr)  # 3 minutes: still rendering when stopped
    out_dir = tmp_path / "out"
    exe = Path(sys.executable).with_name("mmgt")
    proc = subprocess.Popen(
        [str(exe), "render", "--audio", str(long_audio), "--out", str(out_dir / "x.mp4"),
         "--driver", "procedural", "--size", "128", "--debug", "-q"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(1200):  # until the encoders have opened their temporary files
            if out_dir.is_dir() and len(list(out_dir.iterdir())) >= 2:
                break
            time.sleep(0.05)
        partial = sorted(p.name for p in out_dir.iterdir())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert partial and all(n.startswith(".x.") and n.endswith(".part.mp4") for n in partial)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err
    assert list(out_dir.iterdir()) == []


def test_argument_errors(tmp_path, capsys):
    assert main(["render", "--size", "100", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "multiple of 64" in capsys.readouterr().err
    assert main(["render", "--size", "16384", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "in 64…2048, got 16384" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    for out, said in ((tmp_path / "file" / "x.mp4", "file is a file, not a folder"),
                      (Path("/proc/mmgt-test/x.mp4"), "cannot write the output")):  # fmt: skip
        assert main(["render", "--out", str(out), "-q"]) == 2
        assert said in capsys.readouterr().err
    assert main(["render", "--out", str(tmp_path / "x.avi"), "-q", "--size", "128"]) != 0
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
    assert main(["prepare-avatar", "--out", str(tmp_path / "file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
    train = ["train", "--out", str(tmp_path / "run"), "--corpus", str(tmp_path)]
    for cmd in (["eval", "--corpus", str(tmp_path)], train):
        assert main(cmd) == 2
        assert "is not a corpus folder (no manifest.jsonl)" in capsys.readouterr().err
    diffusion = ["render", "--renderer", "diffusion", "--stage2-preset", "tiny", "-q",
                 "--size", "128", "--out", str(tmp_path / "x.mp4")]  # fmt: skip
    assert main([*diffusion, "--device", "gpu"]) == 2
    assert "--device 'gpu' is not a device" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*diffusion, "--device", "cuda:0"]) == 2
        assert re.search("built without CUDA|no CUDA GPU", capsys.readouterr().err)
    assert main(["render", "--head-motion", "3", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "--head-motion must be in 0…2, got 3" in capsys.readouterr().err
    pose = ["--pose-video", str(tmp_path / "file"), "--renderer", "diffusion"]
    assert main(["render", *pose, "--gestures", "0", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "not with --pose-video" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_console_script_and_doctor():
    exe = Path(sys.executable).with_name("mmgt")
    res = subprocess.run([str(exe), "doctor"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "mediapipe" in res.stdout and "onnxruntime" in res.stdout and "missing" not in res.stdout


HEAVY_MODULES = ("torch", "diffusers", "transformers", "scipy.signal", "mediapipe", "aiortc")


@pytest.mark.parametrize("command", ["mmgt", "server"])
def test_help_needs_no_heavy_imports(command):
    """``--help`` and argument errors answer at once: declaring the options of every command
    imports no network or media library (torch alone takes seconds to import)."""
    parse = {
        "mmgt": "from mmgt.cli import _build_parser\n_build_parser().parse_args(['render'])",
        "server": "from server.__main__ import parse_args\nparse_args([])",
    }[command]
    code = f"import sys\n{parse}\nprint([m for m in {HEAVY_MODULES!r} if m in sys.modules])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_render_runs_blas_with_one_thread(tmp_path, short_speech, monkeypatch):
    """While frames are drawn and encoded, NumPy's BLAS runs one thread (its idle threads
    spin and take the encoder's core); the limit is lifted when the render ends."""
    from threadpoolctl import threadpool_info

    from mmgt.renderers.warp import WarpStream

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    seen: list[set[int]] = []
    push = WarpStream.push

    def recording_push(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(blas_threads())
        return push(self, *args, **kwargs)

    monkeypatch.setattr(WarpStream, "push", recording_push)
    before = blas_threads()
    offline.render_video(short_speech, tmp_path / "x.mp4", size=128, progress=False)
    assert seen and all(s == {1} for s in seen)
    assert blas_threads() == before


def test_render_shows_the_motion_progress(tmp_path, short_speech, capsys, monkeypatch):
    """A learned driver reports its windows to a "motion" bar (seconds per minute of audio
    before the first frame is drawn); the hook is removed afterwards."""
    from mmgt.drivers.smga import SMGADriver

    reports: list[tuple[int, int]] = []
    drivers: list[SMGADriver] = []
    generate = SMGADriver.generate

    def recording_generate(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        drivers.append(self)
        hook = self.on_progress
        self.on_progress = lambda done, total: (reports.append((done, total)), hook(done, total))
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(SMGADriver, "generate", recording_generate)
    offline.render_video(short_speech, tmp_path / "x.mp4", size=128, driver="smga")
    frames = math.ceil(2.4 * 16000 / 640)
    assert reports[-1] == (frames, frames) and len(reports) > 1  # one report per window
    assert [d for d, _ in reports] == sorted(d for d, _ in reports)
    assert re.search(rf"motion: 100%.*{frames}/{frames}", capsys.readouterr().err)
    assert drivers and drivers[0].on_progress is None
