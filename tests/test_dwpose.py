"""DWPose reference poses: parity with the official code, the maths, and the wiring.

The released DWPose files cannot be downloaded here, so the official code was run once on
seeded stand-in models with the same signatures (``tests/standin_models.py``,
``scripts/dwpose_fixture.py``); its keypoints are in ``tests/fixtures/official/dwpose.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from mmgt.avatar import load_avatar
from mmgt.errors import InputError
from mmgt.keypoints import dwpose, layout
from mmgt.keypoints.extractor import ReferencePoseExtractor
from tests.standin_models import fixture_images, write_models

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "dwpose.npz"


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("weights")
    return root, write_models(root)


@pytest.fixture(scope="module")
def model(weights: tuple[Path, str]) -> dwpose.DWPose:
    return dwpose.DWPose(weights[0] / "DWPose")


def test_keypoints_equal_the_official_dwpose_code(weights, model) -> None:
    golden = np.load(FIXTURE)
    assert weights[1] == str(golden["models_sha256"]), "the stand-in models changed"
    for name, rgb in fixture_images().items():
        want = golden[f"{name}/keypoints"].reshape(-1, layout.NUM_KEYPOINTS, 3)
        got = model.people(rgb).astype(np.float64)
        # The official keypoints are in pixels of the photo resized for detection.
        h, w = dwpose.resize_for_detection(rgb).shape[:2]
        got[..., 0] *= w / rgb.shape[1]
        got[..., 1] *= h / rgb.shape[0]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-3, err_msg=name)
    # The cases cover several people (NMS), resizing up and down, and nobody found.
    assert golden["astronaut/keypoints"].shape[0] > 1
    assert golden["dark/keypoints"].shape[0] == 1


def test_the_first_person_is_the_reference_pose(model) -> None:
    rgb = fixture_images()["astronaut"]
    np.testing.assert_array_equal(model(rgb), model.people(rgb)[0])


def test_crop_maps_the_box_onto_the_model_input() -> None:
    box = np.array([100.0, 50.0, 200.0, 350.0])  # tall: 100 × 300
    center, scale = dwpose.crop_transform(box, (288, 384))
    np.testing.assert_allclose(center, [150, 200])
    np.testing.assert_allclose(scale, [281.25, 375.0])  # 1.25 × 300 high, widened to 3:4
    m = dwpose.crop_matrix(center, scale, (288, 384))
    corners = np.array([[150 - 140.625, 200 - 187.5, 1], [150 + 140.625, 200 + 187.5, 1]])
    np.testing.assert_allclose(corners @ m.T, [[0, 0], [288, 384]], atol=1e-3)


def test_simcc_decoding() -> None:
    x = np.full((2, 576), -1.0)
    y = np.full((2, 768), -1.0)
    x[0, 101], y[0, 500], x[0, 0], y[0, 0] = 0.9, 0.7, 0.0, 0.0
    x[1, 10], y[1, 20] = 0.5, -0.2  # best y below zero: not found
    locs, scores = dwpose.decode_simcc(x, y)
    np.testing.assert_allclose(locs, [[50.5, 250.0], [-0.5, -0.5]])
    np.testing.assert_allclose(scores, [0.7, -0.2])


def test_wholebody_order_and_neck() -> None:
    pts = np.arange(133 * 2, dtype=np.float64).reshape(133, 2)
    scores = np.full(133, 0.9)
    scores[6] = 0.2  # right shoulder unsure → neck score 0
    out = dwpose.wholebody_to_layout(pts, scores)
    assert out.shape == (layout.NUM_KEYPOINTS, 3)
    coco = {"nose": 0, "l_eye": 1, "r_eye": 2, "l_shoulder": 5, "r_shoulder": 6, "r_wrist": 10}
    np.testing.assert_array_equal(out[0, :2], pts[coco["nose"]])
    np.testing.assert_array_equal(out[layout.R_SHOULDER, :2], pts[coco["r_shoulder"]])
    np.testing.assert_array_equal(out[layout.L_SHOULDER, :2], pts[coco["l_shoulder"]])
    np.testing.assert_array_equal(out[layout.R_WRIST, :2], pts[coco["r_wrist"]])
    np.testing.assert_array_equal(out[14, :2], pts[coco["r_eye"]])  # OpenPose 14: right eye
    np.testing.assert_array_equal(out[15, :2], pts[coco["l_eye"]])
    np.testing.assert_allclose(out[layout.NECK, :2], (pts[5] + pts[6]) / 2)
    assert out[layout.NECK, 2] == 0.0
    np.testing.assert_array_equal(out[18:, :2], pts[17:])  # feet, face, hands in order


def test_the_extractor_takes_dwpose_keypoints_and_keeps_the_framing(model) -> None:
    with ReferencePoseExtractor(dwpose=model) as ex:
        official = load_avatar(None, extractor=ex)
    plain = load_avatar(None)
    np.testing.assert_array_equal(official.image, plain.image)  # same framing
    np.testing.assert_array_equal(official.reference_pose, model(official.image))
    assert official.face_mesh is not None and official.face_mesh.shape == (478, 3)
    assert not np.array_equal(official.reference_pose, plain.reference_pose)


def test_choosing_the_pose_model(weights, tmp_path: Path) -> None:
    root = weights[0]
    assert dwpose.choose_dwpose("auto", root, official_models=True) == root / "DWPose"
    assert dwpose.choose_dwpose("auto", root, official_models=False) is None
    assert dwpose.choose_dwpose("auto", None, official_models=True) is None
    assert dwpose.choose_dwpose("auto", tmp_path, official_models=True) is None
    assert dwpose.choose_dwpose("mediapipe", root, official_models=True) is None
    assert dwpose.choose_dwpose("dwpose", root, official_models=False) == root / "DWPose"
    with pytest.raises(InputError, match="yolox_l.onnx"):
        dwpose.choose_dwpose("dwpose", tmp_path, official_models=True)
    with pytest.raises(InputError, match="unknown pose model"):
        dwpose.choose_dwpose("openpose", root, official_models=True)


def test_signature_check(weights, tmp_path: Path) -> None:
    assert dwpose.signature_problems(weights[0] / "DWPose") == []
    (tmp_path / dwpose.DETECTOR_FILE).write_bytes(b"not onnx")
    problems = dwpose.signature_problems(tmp_path)
    assert any("yolox_l.onnx: not a readable ONNX file" in p for p in problems)
    assert any(f"{dwpose.POSE_FILE}: missing" in p for p in problems)
    # A pose model of another input size is named with its dims.
    import onnx

    from tests.standin_models import pose_model

    m = pose_model()
    m.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 192
    onnx.save(m, tmp_path / dwpose.POSE_FILE)
    problems = dwpose.signature_problems(tmp_path)
    assert any("inputs [(1, 3, 384, 192)]" in p for p in problems)


def test_missing_or_broken_files_are_a_clear_error(weights, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing DWPose file"):
        dwpose.DWPose(tmp_path)
    (tmp_path / dwpose.DETECTOR_FILE).write_bytes(b"not onnx")
    (tmp_path / dwpose.POSE_FILE).write_bytes(
        (weights[0] / "DWPose" / dwpose.POSE_FILE).read_bytes()
    )
    with pytest.raises(InputError, match="yolox_l.onnx: ONNX Runtime cannot load it"):
        dwpose.DWPose(tmp_path)


def test_cli_prepare_avatar_uses_dwpose_from_the_weights_folder(weights, tmp_path, capsys) -> None:
    from mmgt.cli import main

    out = tmp_path / "avatar"
    assert main(["prepare-avatar", "--weights-dir", str(weights[0]), "--out", str(out)]) == 0
    assert "reference pose: DWPose" in capsys.readouterr().err
    pose = np.load(out / "reference_pose.npy")
    with ReferencePoseExtractor(dwpose=dwpose.DWPose(weights[0] / "DWPose")) as ex:
        np.testing.assert_array_equal(pose, load_avatar(None, extractor=ex).reference_pose)


def test_server_pose_model_flag(weights) -> None:
    from server.__main__ import parse_args, settings_from

    def settings(*argv: str):  # noqa: ANN202
        return settings_from(parse_args(list(argv)))

    assert settings().dwpose_dir is None
    assert settings("--weights-dir", str(weights[0])).dwpose_dir is None  # warp: MediaPipe
    chosen = settings("--weights-dir", str(weights[0]), "--pose-model", "dwpose").dwpose_dir
    assert chosen == str(weights[0] / "DWPose")
    with pytest.raises(InputError, match="needs yolox_l.onnx"):
        settings("--pose-model", "dwpose")
    assert isinstance(parse_args([]), argparse.Namespace)


def test_server_avatars_take_dwpose_keypoints(weights, model) -> None:
    import asyncio

    from server.avatars import AvatarStore

    store = AvatarStore(512, dwpose_dir=str(weights[0] / "DWPose"))
    avatar = asyncio.run(store.load_default())
    np.testing.assert_array_equal(avatar.reference_pose, model(avatar.image))


def test_check_weights_reports_dwpose(weights, tmp_path: Path) -> None:
    from mmgt.weights.check import check_dwpose

    assert check_dwpose(weights[0]).status == "ok"
    assert check_dwpose(tmp_path).status == "absent"
    (tmp_path / "DWPose").mkdir()
    report = check_dwpose(tmp_path)
    assert report.status == "problems" and len(report.problems) == 2


def test_data_extract_takes_dwpose_keypoints(weights, model, tmp_path: Path, capsys) -> None:
    """Training clips from a video carry the official convention when DWPose is given."""
    from mmgt.train.corpus import format as fmt
    from mmgt.train.corpus.cli import add_cli, run_cli
    from mmgt.train.corpus.video import VideoFramer
    from mmgt.video import video_frames
    from tests.test_corpus import _write_video

    video = tmp_path / "talk.mkv"
    _write_video(video, frames=4)
    parser = argparse.ArgumentParser(prog="mmgt")
    add_cli(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "real"
    argv = ["data", "extract", "--video", str(video), "--out", str(out)]
    assert run_cli(parser.parse_args([*argv, "--weights-dir", str(weights[0])])) == 0
    assert "reference pose: DWPose" in capsys.readouterr().err
    (clip,) = fmt.read_corpus(out)
    _, keypoints, _ = clip.load()
    source = video_frames(video)
    first = next(iter(source))[1]
    source.close()
    with ReferencePoseExtractor() as ex:
        square = VideoFramer(ex).square(first)
    np.testing.assert_allclose(keypoints[0], model(square), atol=1e-4)
