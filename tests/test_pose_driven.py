"""The diffusion renderer's pose-driven mode (the official pose2vid) from the command line.

``render --debug`` writes the pose and mask videos of a speech-driven render; feeding them back
with ``--pose-video/--face-mask-video/--lips-mask-video`` renders the same motion without
speech. The conditions decoded from those videos match the ones computed from keypoints up to
the codec's loss.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from mmgt.audio import load_audio
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.cli import main
from mmgt.keypoints.render import render_pose
from mmgt.mask_filters import mask_pyramid
from mmgt.masks import MotionMaskStream, blur_kernel
from mmgt.offline import _read_video

SIZE = 128


@pytest.fixture(scope="module")
def debug_videos(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pose2vid")
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[:16000]
    audio = folder / "speech.wav"
    sf.write(audio, speech, 16000)
    out = folder / "drive.mp4"
    args = ["render", "--audio", str(audio), "--out", str(out), "--size", str(SIZE), "--debug",
            "-q", "--driver", "procedural"]  # fmt: skip
    assert main(args) == 0
    return out, audio


def _videos(out: Path) -> list[str]:
    return [str(out.with_name(f"{out.stem}.{k}.mp4")) for k in ("pose", "face", "lips")]


def _streams(path: Path) -> tuple[int, bool]:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0)), bool(c.streams.audio)


def test_debug_mask_videos_round_trip_to_the_keypoint_conditions(debug_videos):
    """Pose images and mask pyramids read back from the videos ≈ those drawn from keypoints."""
    from mmgt.audio import extract_light_features
    from mmgt.avatar import load_avatar
    from mmgt.drivers import make_driver

    out, audio = debug_videos
    avatar = load_avatar(None, frame_size=SIZE)
    poses = make_driver("procedural").generate(
        extract_light_features(load_audio(audio)), avatar.reference_pose, frame_size=SIZE
    )
    pose_video, face_video, lips_video = _videos(out)
    pose = _read_video(pose_video, SIZE, 0)
    face = _read_video(face_video, SIZE, 0, gray=True)
    lips = _read_video(lips_video, SIZE, 0, gray=True)
    assert len(pose) == len(face) == len(lips) == len(poses) == 25
    stream = MotionMaskStream(SIZE, names=("face_hands", "lips"))
    for i in (0, 12, 24):
        drawn = render_pose(poses.points[i], SIZE).astype(int)
        assert np.abs(pose[i].astype(int) - drawn).mean() < 4  # x264 on thin lines
        want = stream.push(poses.points[i], i).pyramid
        got = mask_pyramid(lips[i], blur_kernel("lips", SIZE))
        assert np.abs(got[0] - want["lips"][0]).max() < 0.05
        got = mask_pyramid(face[i], blur_kernel("face_hands", SIZE))
        assert np.abs(got[0] - want["face_hands"][0]).max() < 0.05
        assert want["lips"][0].max() > 0.9  # the lips box is there


def test_pose_driven_render_with_and_without_audio(debug_videos, tmp_path, caplog):
    out, audio = debug_videos
    pose, face, lips = _videos(out)
    base = ["render", "--renderer", "diffusion", "--stage2-preset", "tiny", "--size", str(SIZE),
            "--render-steps", "1", "--render-guidance", "1", "-q", "--pose-video", pose,
            "--face-mask-video", face, "--lips-mask-video", lips]  # fmt: skip
    silent = tmp_path / "silent.mp4"
    assert main([*base, "--out", str(silent)]) == 0
    assert _streams(silent) == (25, False)  # official pose2vid: no audio
    voiced = tmp_path / "voiced.mp4"
    assert main([*base, "--out", str(voiced), "--audio", str(audio)]) == 0
    assert _streams(voiced) == (25, True)
    assert "differ in length" not in caplog.text
    # Inputs of different lengths: the shortest decides, and the user is told.
    short = tmp_path / "short.wav"
    sf.write(short, load_audio(audio)[:8000], 16000)
    clipped = tmp_path / "clipped.mp4"
    assert main([*base, "--out", str(clipped), "--audio", str(short)]) == 0
    assert _streams(clipped) == (13, True)
    assert "differ in length (pose 25, face mask 25, lips mask 25, audio 13 frames)" in caplog.text


def test_pose_driven_mode_refuses_bad_input(debug_videos, tmp_path, capsys):
    out, audio = debug_videos
    pose, face, lips = _videos(out)
    target = tmp_path / "x.mp4"
    tiny = ["render", "--renderer", "diffusion", "--stage2-preset", "tiny", "--size", str(SIZE),
            "-q", "--out", str(target)]  # fmt: skip
    assert main([*tiny, "--pose-video", pose, "--face-mask-video", face]) == 2
    assert "--lips-mask-video" in capsys.readouterr().err
    warp = ["render", "-q", "--size", str(SIZE), "--out", str(target)]
    assert main([*warp, "--pose-video", pose, "--face-mask-video", face,
                 "--lips-mask-video", lips]) == 2  # fmt: skip
    assert "--renderer diffusion" in capsys.readouterr().err
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    assert main([*tiny, "--pose-video", str(not_video), "--face-mask-video", face,
                 "--lips-mask-video", lips]) == 2  # fmt: skip
    assert "could not be decoded" in capsys.readouterr().err
    assert not target.exists() and not list(tmp_path.glob(".x*"))
