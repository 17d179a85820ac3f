"""Prepared avatar folders: ``prepare-avatar`` writes one, ``render --image DIR`` and the server's
``--avatar NAME=DIR`` read it back without running the extractor, hand edits included."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmgt.audio import load_audio, write_wav
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.avatar_folder import (
    IMAGE_FILE,
    MESH_FILE,
    META_FILE,
    POSE_FILE,
    PREVIEW_FILE,
    read_avatar_folder,
    write_avatar_folder,
)
from mmgt.cli import main
from mmgt.errors import ImageError, NoFaceError
from mmgt.keypoints import layout
from mmgt.keypoints.extractor import ReferencePoseExtractor

HOPPER = Path(__file__).parent / "data" / "grace_hopper.jpg"


@pytest.fixture
def no_extraction(monkeypatch):
    """Any use of the extractor fails the test: a prepared folder must not need it."""

    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise AssertionError("the extractor ran on a prepared avatar")

    monkeypatch.setattr(ReferencePoseExtractor, "__call__", refuse)


@pytest.fixture(scope="module")
def bundled_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("avatars") / "astronaut"
    assert main(["prepare-avatar", "--out", str(folder), "--size", "128"]) == 0
    return folder


def test_prepare_avatar_writes_a_folder_that_reads_back_unchanged(tmp_path, capsys):
    photo = load_avatar(HOPPER, frame_size=256)
    folder = tmp_path / "hopper"
    assert main(["prepare-avatar", "--image", str(HOPPER), "--out", str(folder), "--size",
                 "256"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == str(folder)
    names = {IMAGE_FILE, POSE_FILE, MESH_FILE, META_FILE, PREVIEW_FILE}
    assert {p.name for p in folder.iterdir()} == names  # no temporary file left
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["format"] == "mmgt-avatar" and meta["version"] == 1
    assert (meta["name"], meta["frame_size"], meta["source"]) == ("grace_hopper", 256,
                                                                  HOPPER.name)  # fmt: skip
    assert meta["pose_model"] == "mediapipe" and meta["notes"] == []

    back = read_avatar_folder(folder, frame_size=256)
    np.testing.assert_array_equal(back.image, photo.image)
    np.testing.assert_array_equal(back.reference_pose, photo.reference_pose)
    np.testing.assert_array_equal(back.face_mesh, photo.face_mesh)
    assert (back.name, back.notes) == (photo.name, photo.notes)


def test_render_reads_the_folder_and_its_hand_edits(bundled_folder, tmp_path, no_extraction,
                                                    capsys):  # fmt: skip
    edited = tmp_path / "edited"
    edited.mkdir()
    for f in bundled_folder.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    pose = np.load(edited / POSE_FILE)
    pose[layout.R_SHOULDER, :2] += (-5.0, 3.0)  # a corrected shoulder
    pose[layout.RIGHT_HAND, 2] = 0.0  # a hand hidden by hand
    np.save(edited / POSE_FILE, pose)
    avatar = load_avatar(edited, frame_size=128)
    np.testing.assert_array_equal(avatar.reference_pose, pose)

    speech = load_audio(BUNDLED_AVATAR.parent / "speech_sample.wav")[:16000]
    wav = tmp_path / "one_second.wav"
    write_wav(wav, speech, 16000)
    out = tmp_path / "out.mp4"
    assert main(["render", "--image", str(edited), "--audio", str(wav), "--out", str(out),
                 "--size", "128", "-q"]) == 0  # fmt: skip
    assert out.is_file() and capsys.readouterr().out.strip().endswith(str(out))


def test_a_folder_is_resized_to_the_frame_size_asked_for(bundled_folder, no_extraction,
                                                         tmp_path):  # fmt: skip
    small = read_avatar_folder(bundled_folder, frame_size=128)
    big = read_avatar_folder(bundled_folder, frame_size=256)
    assert big.image.shape == (256, 256, 3)
    assert small.notes == () and big.notes == (
        "the prepared avatar is 128×128 px and is enlarged to 256×256 (blurrier); prepare it at "
        "--size 256",
    )
    np.testing.assert_allclose(big.reference_pose[:, :2], 2 * small.reference_pose[:, :2])
    np.testing.assert_array_equal(big.reference_pose[:, 2], small.reference_pose[:, 2])
    np.testing.assert_allclose(big.face_mesh, 2 * small.face_mesh)
    # The framed photo scaled, not re-framed: the same picture at twice the size.
    assert np.abs(big.image[::2, ::2].astype(float) - small.image).mean() < 8
    # prepare-avatar from a folder writes it at another size, keeping where its pose came from.
    copy = tmp_path / "big"
    assert main(["prepare-avatar", "--image", str(bundled_folder), "--out", str(copy), "--size",
                 "256"]) == 0  # fmt: skip
    meta = json.loads((copy / META_FILE).read_text())
    assert (meta["pose_model"], meta["source"]) == ("mediapipe", "astronaut.png (bundled)")
    np.testing.assert_array_equal(np.load(copy / POSE_FILE), big.reference_pose)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _pose(folder: Path) -> np.ndarray:
    return np.load(folder / POSE_FILE)


BROKEN = {
    "empty": (lambda d: [p.unlink() for p in d.iterdir()], "not a prepared avatar"),
    "shape": (lambda d: np.save(d / POSE_FILE, np.zeros((133, 3))), "134×3 array"),
    "pickle": (
        lambda d: np.save(d / POSE_FILE, np.array([{}] * 3, dtype=object)),
        "pickled objects",
    ),  # fmt: skip
    "text": (lambda d: (d / POSE_FILE).write_text("x, y, score"), "not a NumPy array file"),
    "nan": (lambda d: np.save(d / POSE_FILE, _pose(d) * np.nan), "NaN"),
    "negative": (lambda d: np.save(d / POSE_FILE, _pose(d) * (1, 1, -1)), "must not be negative"),
    "mesh": (lambda d: np.save(d / MESH_FILE, np.zeros((468, 3))), "478×3 array"),
    "not_square": (lambda d: Image.new("RGB", (160, 128)).save(d / IMAGE_FILE), "must be square"),
    "json": (lambda d: (d / META_FILE).write_text("{name: x"), "not readable JSON"),
    "format": (lambda d: (d / META_FILE).write_text('{"format": "other"}'), "not an avatar"),
    "version": (
        lambda d: (d / META_FILE).write_text('{"format": "mmgt-avatar", "version": 2}'),
        "version 2",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folders_are_refused_by_name(bundled_folder, tmp_path, case, capsys):
    folder = _copy(bundled_folder, tmp_path / case)
    damage, message = BROKEN[case]
    damage(folder)
    with pytest.raises(ImageError, match=message):
        read_avatar_folder(folder, frame_size=128)
    out = tmp_path / "out.mp4"
    assert main(["render", "--image", str(folder), "--out", str(out), "-q", "--size", "128"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [case]


def test_a_pose_without_a_face_is_refused(bundled_folder, tmp_path):
    folder = _copy(bundled_folder, tmp_path / "faceless")
    pose = _pose(folder)
    pose[layout.FACE, 2] = 0.0
    np.save(folder / POSE_FILE, pose)
    with pytest.raises(NoFaceError, match="shows 0 of the 68 face points"):
        read_avatar_folder(folder, frame_size=128)


def test_writing_over_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    avatar = load_avatar(frame_size=128)
    with pytest.raises(ImageError, match="is a file"):
        write_avatar_folder(avatar, tmp_path / "file")


def test_a_failed_write_leaves_the_previous_avatar(bundled_folder, tmp_path, monkeypatch):
    folder = _copy(bundled_folder, tmp_path / "avatar")
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    other = read_avatar_folder(folder, frame_size=128)
    other = dataclasses.replace(other, image=np.ascontiguousarray(other.image[:, ::-1]))

    def disk_full(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)  # after the photo, before the pose
    with pytest.raises(OSError, match="No space"):
        write_avatar_folder(other, folder)
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


def test_the_server_offers_a_prepared_folder(bundled_folder, no_extraction):
    from server.avatars import AvatarStore

    store = AvatarStore(256)
    try:
        avatar = asyncio.run(store.add_public("mine", bundled_folder))
    finally:
        store.close()
    assert avatar.name == "mine" and avatar.frame_size == 256
    np.testing.assert_allclose(avatar.reference_pose[:, :2], 2 * _pose(bundled_folder)[:, :2])
    assert store.public_ids() == ["mine"]
