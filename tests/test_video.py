"""Mp4Writer: H.264 + AAC in sync, and never a partial file."""

from __future__ import annotations

import av
import numpy as np
import pytest

from mmgt.video import Mp4Writer


def _frames(n: int, size: int = 64) -> list[np.ndarray]:
    return [np.full((size, size, 3), (i * 9) % 256, np.uint8) for i in range(n)]


def test_writes_h264_and_aac_of_matching_length(tmp_path):
    audio = (0.2 * np.sin(2 * np.pi * 440 * np.arange(48000 * 2) / 48000)).astype(np.float32)
    out = tmp_path / "clip.mp4"
    with Mp4Writer(out, 64, audio=audio) as w:
        for f in _frames(50):
            w.write(f)
    assert out.is_file() and not list(tmp_path.glob(".*part*"))
    with av.open(str(out)) as c:
        v, a = c.streams.video[0], c.streams.audio[0]
        assert v.codec_context.name == "h264" and a.codec_context.name == "aac"
        assert v.average_rate == 25 and (v.width, v.height) == (64, 64)
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 50
    # Grey levels survive H.264 closely and in order (no dropped or reordered frames).
    means = np.array([f.mean() for f in frames])
    np.testing.assert_allclose(means, [(i * 9) % 256 for i in range(50)], atol=4)
    with av.open(str(out)) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
    assert abs(samples / 48000 - 2.0) < 0.05  # audio lasts as long as the video


def test_silent_video_and_rectangular_size(tmp_path):
    out = tmp_path / "side.mp4"
    with Mp4Writer(out, (96, 32)) as w:
        for _ in range(5):
            w.write(np.zeros((32, 96, 3), np.uint8))
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 0
        assert (c.streams.video[0].width, c.streams.video[0].height) == (96, 32)


def test_failure_leaves_no_file(tmp_path):
    out = tmp_path / "fail.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(out, 64) as w:
            w.write(_frames(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_the_partial_file_exists_only_while_frames_are_written(tmp_path):
    out = tmp_path / "late.mp4"
    w = Mp4Writer(out, 64)
    assert list(tmp_path.iterdir()) == []  # nothing to clean up before the caller holds it
    w.write(_frames(1)[0])
    (part,) = tmp_path.iterdir()
    assert part.name.startswith(".late.") and part.name.endswith(".part.mp4")
    assert w.close() == out and [p.name for p in tmp_path.iterdir()] == ["late.mp4"]


def test_an_interrupt_while_the_file_opens_leaves_nothing(tmp_path, monkeypatch):
    import mmgt.video

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - SIGTERM lands in av.open
        raise KeyboardInterrupt

    monkeypatch.setattr(mmgt.video.av, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with Mp4Writer(tmp_path / "x.mp4", 64) as w:
            w.write(_frames(1)[0])
    assert list(tmp_path.iterdir()) == []


def test_existing_file_is_kept_until_success(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"previous")
    w = Mp4Writer(out, 64)
    w.write(_frames(1)[0])
    w.abort()
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match=".mp4"):
        Mp4Writer(tmp_path / "x.avi", 64)
    with pytest.raises(ValueError, match="even"):
        Mp4Writer(tmp_path / "x.mp4", 63)
    w = Mp4Writer(tmp_path / "y.mp4", 64)
    with pytest.raises(ValueError, match="uint8"):
        w.write(np.zeros((32, 32, 3), np.uint8))
    w.abort()
    assert list(tmp_path.iterdir()) == []
