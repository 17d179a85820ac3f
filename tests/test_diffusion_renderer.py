"""The stage-2 ``diffusion`` renderer end to end with random tiny models: live windows through
the scheduler, the per-avatar cache, offline clips and ``mmgt render``."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import mmgt.renderers.diffusion as diffusion
from engine.engine import Engine, EngineConfig
from engine.frames import AudioFrame, VideoFrame
from engine.scheduler import StreamScheduler, StreamSettings
from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.cli import main
from mmgt.drivers.procedural import ProceduralDriver
from mmgt.renderers import make_renderer
from mmgt.renderers.diffusion_windows import context_windows
from mmgt.types import AudioFeatures, Avatar
from tests.helpers import synthetic_reference_pose

SIZE = 128


@pytest.fixture(scope="module")
def renderer():
    return make_renderer("diffusion", preset="tiny", live=True, seed=3)


@pytest.fixture(scope="module")
def avatar() -> Avatar:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    return Avatar("noise", image, synthetic_reference_pose() * np.float32([0.25, 0.25, 1]))


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 16000 * 2]


def test_offline_windows_follow_the_official_plan():
    plan = context_windows(80)
    assert len(plan) == 10 and plan[0] == list(range(12)) and plan[-1][:8] == list(range(72, 80))
    assert plan[-1][8:] == [0, 1, 2, 3]  # closed loop wraps around
    open_plan = context_windows(30, closed_loop=False)
    assert open_plan[-1] == list(range(18, 30)) and context_windows(7) == [list(range(7))]


def test_live_windows_keep_committed_latents_and_contiguous_pts(
    renderer, avatar, speech, monkeypatch
):
    seen: list[tuple[torch.Tensor | None, torch.Tensor]] = []
    original = diffusion.sample_continuation

    def spy(denoise, noise, sampler, steps, committed=None):  # noqa: ANN001, ANN202
        before = None if committed is None else committed.clone()
        out = original(denoise, noise, sampler, steps, committed)
        if committed is not None:
            assert torch.equal(committed, before)  # never modified in place
            assert torch.equal(out[:, :, : committed.shape[2]], committed)
        seen.append((before, out[:, :, -4:].clone()))
        return out

    monkeypatch.setattr(diffusion, "sample_continuation", spy)
    state = renderer.prepare(avatar)
    sched = StreamScheduler(
        ProceduralDriver(),
        lambda: renderer.open_stream(state),
        avatar.reference_pose,
        SIZE,
        settings=StreamSettings(vad=False, realtime=False),
        needs_audio=True,
        audio_kind="pcm16k",
    )
    out = []
    for k in range(0, speech.size, 3200):
        sched.push_audio(speech[k : k + 3200], 16000, 1, None)
        while frames := sched.step(None):
            out.extend(frames)
    sched.end_segment()
    while frames := sched.step(None):
        out.extend(frames)
    out.extend(sched.drain())
    video = [f for f in out if isinstance(f, VideoFrame)]
    audio = [f for f in out if isinstance(f, AudioFrame)]
    assert len(seen) >= 6  # ≥ 5 continued windows
    for (_, tail), (committed, _) in zip(seen, seen[1:], strict=False):
        assert torch.equal(committed, tail)  # each window continues from the last one's latents
    assert [f.index for f in video] == list(range(len(video)))
    assert [f.index for f in audio] == [f.index for f in video]
    assert len(video) >= 50 and all(f.image.shape == (SIZE, SIZE, 3) for f in video)


def test_a_non_finite_window_holds_frames_and_later_windows_recover(
    renderer, avatar, speech, monkeypatch
):
    """An fp16 overflow in one window must not carry NaN into every later window through the
    committed latents (the rest of the session would be black)."""
    original, calls = diffusion.sample_continuation, []

    def overflow_once(denoise, noise, sampler, steps, committed=None):  # noqa: ANN001, ANN202
        out = original(denoise, noise, sampler, steps, committed)
        calls.append(committed)
        if len(calls) == 2:
            out[:, :, -3:] = float("nan")
        return out

    monkeypatch.setattr(diffusion, "sample_continuation", overflow_once)
    stream = renderer.open_stream(renderer.prepare(avatar))
    poses = ProceduralDriver().generate(
        extract_light_features(speech), avatar.reference_pose, frame_size=SIZE
    )
    n = len(poses)
    rows = np.pad(speech, (0, n * 640 - speech.size)).reshape(n, 640)
    frames = stream.push(poses, None, AudioFeatures(rows, 25, 0, "pcm16k")) + stream.flush()
    assert len(frames) == n and len(calls) >= 4
    assert stream.nonfinite_frames == 3
    assert all(torch.isfinite(c).all() for c in calls[2:])  # later windows continue clean
    held = 2 * stream.new_frames - 3  # the first NaN frame shows the frame before it
    np.testing.assert_array_equal(frames[held], frames[held - 1])
    assert all(f.std() > 0 for f in frames)


class _Tagged:
    """A render stream wrapper that remembers which pose each returned image was drawn for."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream, self.queue, self.pose_of = stream, [], {}
        self.window, self.latency_frames = stream.window, stream.latency_frames

    def _tag(self, images: list) -> list:
        for image in images:
            self.pose_of[id(image)] = self.queue.pop(0)
        return images

    def push(self, poses, masks=None, audio=None):  # noqa: ANN001, ANN201
        self.queue += list(range(poses.start_frame, poses.stop_frame))
        return self._tag(self.stream.push(poses, masks, audio))

    def flush(self):  # noqa: ANN201
        return self._tag(self.stream.flush())

    def close(self) -> None:
        self.stream.close()


def test_a_hold_lets_the_held_window_out_first_and_windows_go_on(renderer, avatar, speech):
    """Under the deepest degradation (hold) the frames the stream holds come out before the
    held ones, so every later image still shows its own frame's pose (they came out 8 frames
    late for the rest of the session)."""
    state = renderer.prepare(avatar)
    streams: list[_Tagged] = []
    sched = StreamScheduler(
        ProceduralDriver(),
        lambda: streams.append(_Tagged(renderer.open_stream(state))) or streams[-1],
        avatar.reference_pose,
        SIZE,
        settings=StreamSettings(vad=False, realtime=False),
        needs_audio=True,
        audio_kind="pcm16k",
    )
    sched.push_audio(speech, 16000, 1, None)
    out = []
    for level in (0, 0, 0, 3, 3, 0, 0, 0, 0):
        sched.level = level
        out.extend(sched.step(None))
    sched.end_segment()
    out.extend(sched.drain())
    video = [f for f in out if isinstance(f, VideoFrame)]
    assert [f.index for f in video] == list(range(len(video)))
    pose_of = streams[0].pose_of
    drawn = [pose_of.get(id(f.image)) for f in video]
    held = {f.index for f, prev in itertools.pairwise(video[::-1]) if f.image is prev.image}
    assert held
    assert all(d == f.index for f, d in zip(video, drawn, strict=True) if f.index not in held)
    assert drawn[-1] == video[-1].index  # rendering went on after the hold


async def test_the_avatar_cache_is_built_once_for_two_sessions(avatar):
    engine = Engine(
        EngineConfig(
            driver="procedural",
            renderer="diffusion",
            renderer_options={"preset": "tiny", "live": True},
        )
    )
    try:
        a = engine.open_session(avatar, name="a")
        b = engine.open_session(avatar, name="b")
        assert engine.renderer.prepare_calls == 1
        assert a.scheduler.audio_kind == "pcm16k"
        await a.aclose()
        await b.aclose()
    finally:
        await engine.aclose()


def test_render_clip_offline_is_deterministic(renderer, avatar, speech):
    from dataclasses import replace

    from mmgt.types import KeypointSeq

    r = diffusion.DiffusionRenderer(
        renderer.models, replace(renderer.settings, steps=2, guidance=2.0)
    )
    state = r.prepare(avatar)
    poses = KeypointSeq(np.repeat(avatar.reference_pose[None], 14, 0), SIZE)
    a = r.render_clip(state, poses, speech[: 14 * 640])
    b = r.render_clip(state, poses, speech[: 14 * 640])
    assert len(a) == 14 and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_cli_render_with_the_tiny_preset(tmp_path, speech):
    import soundfile as sf

    wav = tmp_path / "short.wav"
    sf.write(wav, speech[: 16000 * 3 // 2], 16000)
    out = tmp_path / "tiny.mp4"
    args = [
        "render",
        "--renderer",
        "diffusion",
        "--stage2-preset",
        "tiny",
        "--render-steps",
        "1",
        "--audio",
        str(wav),
        "--size",
        "128",
        "--out",
        str(out),
        "-q",
        "--driver",
        "procedural",
    ]
    assert main(args) == 0
    import av

    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 38 and frames[0].shape == (128, 128, 3)
    assert main(["render", "--renderer", "diffusion", "--out", str(tmp_path / "x.mp4")]) == 2
    assert not (tmp_path / "x.mp4").exists()


def test_render_from_an_official_weights_folder(tmp_path, monkeypatch, capsys):
    """``render --renderer diffusion --weights-dir W``: the official folder layout (here holding
    the random tiny models, and stand-ins of DWPose and the vocal separator) goes through the
    whole stage-2 path into an mp4: the reference pose from DWPose, the audio tokens from the
    separated vocals."""
    import av
    import soundfile as sf

    from mmgt.audio.separation import SEPARATOR_FILE, VocalSeparator
    from tests.helpers import write_tiny_official_folder
    from tests.standin_models import separator_model, write_models

    root = tmp_path / "weights"
    write_tiny_official_folder(root)
    write_models(root)
    (root / SEPARATOR_FILE).parent.mkdir()
    (root / SEPARATOR_FILE).write_bytes(separator_model().SerializeToString())
    separated = []
    vocals = VocalSeparator.vocals
    monkeypatch.setattr(VocalSeparator, "vocals",
                        lambda self, *a: separated.append(a[1]) or vocals(self, *a))  # fmt: skip
    wav = tmp_path / "speech.wav"
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[:9600]
    sf.write(wav, speech, 16000)
    out = tmp_path / "official.mp4"
    args = ["render", "--renderer", "diffusion", "--weights-dir", str(root), "--audio", str(wav),
            "--size", "128", "--render-steps", "1", "--render-guidance", "1", "--driver",
            "procedural", "--out", str(out), "-q"]  # fmt: skip
    assert main(args) == 0
    assert "reference pose: DWPose" in capsys.readouterr().err
    assert separated == [16000]  # the original audio, at its own rate
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 15
    assert main([*args, "--no-vocal-separation"]) == 0 and len(separated) == 1
    (root / "stage_2" / "net-7.pth").unlink()  # no stage-2 network: a clear error, no file
    assert main([*args[:-3], "--out", str(tmp_path / "x.mp4"), "-q"]) == 2
    assert not (tmp_path / "x.mp4").exists()
