"""Reference-pose extractor and avatar preparation on the bundled photo and its variants."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mmgt.avatar import BUNDLED_AVATAR, face_turn, load_image, prepare_avatar
from mmgt.errors import NoPersonError
from mmgt.keypoints import layout
from mmgt.keypoints.extractor import MESH_TO_IBUG68, ReferencePoseExtractor, drop_duplicate_hand

LABELS = json.loads((Path(__file__).parent / "data" / "astronaut_labels.json").read_text())
FACE_TOLERANCE_PX = 6.0
# BlazePose places shoulders inside the bulky suit's silhouette (measured 10–22 px from the
# hand labels, see docs/models.md); the 6 px target is met for the face points only.
SHOULDER_TOLERANCE_PX = 25.0


@pytest.fixture(scope="module")
def extractor():
    with ReferencePoseExtractor() as ex:
        yield ex


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return load_image(BUNDLED_AVATAR)


def _labels(flip: bool) -> dict[int, tuple[np.ndarray, float]]:
    """Keypoint index → (expected xy, tolerance) for the photo or its mirror image."""
    out = {}
    for group, tol in (("face", FACE_TOLERANCE_PX), ("shoulders", SHOULDER_TOLERANCE_PX)):
        for key, item in LABELS[group].items():
            idx, xy = int(key), np.array(item["xy"], np.float32)
            if flip:
                idx = int(layout.MIRROR_PERMUTATION[idx])
                xy = np.array([LABELS["image_size"] - xy[0], xy[1]], np.float32)
            out[idx] = (xy, tol)
    return out


def _check_labels(points: np.ndarray, flip: bool) -> None:
    errors = {}
    for idx, (xy, tol) in _labels(flip).items():
        assert points[idx, 2] > layout.VISIBILITY_THRESHOLD, f"keypoint {idx} not visible"
        err = float(np.linalg.norm(points[idx, :2] - xy))
        errors[idx] = err
        assert err <= tol, f"keypoint {idx}: {err:.1f} px from the hand label (tolerance {tol})"


@pytest.mark.parametrize("variant", ["original", "flipped", "upscaled_2x", "downscaled_0.75x"])
def test_keypoints_match_hand_labels(extractor, photo, variant):
    img = {
        "original": photo,
        "flipped": photo[:, ::-1],
        "upscaled_2x": cv2.resize(photo, (1024, 1024), interpolation=cv2.INTER_CUBIC),
        "downscaled_0.75x": cv2.resize(photo, (384, 384), interpolation=cv2.INTER_AREA),
    }[variant]
    avatar = prepare_avatar(np.ascontiguousarray(img), frame_size=512, extractor=extractor)
    assert avatar.image.shape == (512, 512, 3)
    _check_labels(avatar.reference_pose, flip=variant == "flipped")


def test_layout_of_extraction(extractor, photo):
    result = extractor(photo)
    kp = result.keypoints
    assert kp.shape == (134, 3) and kp.dtype == np.float32
    assert result.face_mesh.shape == (478, 3)
    assert 0.0 <= kp[:, 2].min() and kp[:, 2].max() <= 1.0
    # Face points come from the mesh through the iBUG mapping, with the face score.
    np.testing.assert_allclose(kp[layout.FACE, :2], result.face_mesh[MESH_TO_IBUG68, :2])
    assert np.all(kp[layout.FACE, 2] == pytest.approx(result.face_score))
    # The neck is synthesised at the shoulder midpoint with a 0/1 score (DWPose convention).
    mid = (kp[layout.R_SHOULDER, :2] + kp[layout.L_SHOULDER, :2]) / 2
    np.testing.assert_allclose(kp[layout.NECK, :2], mid, atol=1e-4)
    assert kp[layout.NECK, 2] == 1.0
    # Hands are hidden in this photo: score 0, not an error.
    assert kp[layout.HANDS, 2].max() == 0.0
    # Anatomy: eyes above the nose tip above the mouth; the person's right eye is on image left.
    assert kp[layout.face_index(36), 0] < kp[layout.face_index(45), 0]
    assert (
        kp[layout.face_index(37), 1] < kp[layout.face_index(30), 1] < kp[layout.face_index(51), 1]
    )
    assert kp[layout.R_SHOULDER, 0] < kp[layout.L_SHOULDER, 0]


def test_mirrored_photo_gives_mirrored_body(extractor, photo):
    a = extractor(photo).keypoints
    b = extractor(np.ascontiguousarray(photo[:, ::-1])).keypoints
    back = layout.mirror(b, photo.shape[1])
    body = np.r_[layout.BODY[:8], 14, 15, 16, 17]
    # Test-time mirroring averages both views, so the two results agree closely.
    assert np.abs(back[body, :2] - a[body, :2]).max() < 1.0
    assert np.abs(back[layout.FACE, :2] - a[layout.FACE, :2]).max() < 4.0


@pytest.mark.parametrize("kind", ["noise", "flat", "shapes"])
def test_photo_without_person_is_refused(extractor, kind):
    rng = np.random.default_rng(0)
    if kind == "noise":
        img = rng.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    elif kind == "flat":
        img = np.full((384, 384, 3), 128, np.uint8)
    else:
        img = np.full((384, 384, 3), 230, np.uint8)
        for _ in range(12):
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(img, tuple(int(v) for v in rng.integers(0, 384, 2)), 30, c, -1)
    with pytest.raises(NoPersonError, match="no person"):
        extractor(img)


@pytest.mark.parametrize("layout_", ["wide", "tall"])
def test_a_person_small_in_a_panorama_is_found(extractor, photo, layout_):
    """Shrunk whole to the detection size, a 6000-px-wide strip leaves a face too small to
    find; the search then looks at windows of the full-size photo. Nobody there: refused."""
    if layout_ == "wide":
        canvas = np.full((512, 6000, 3), 200, np.uint8)
        canvas[:, 3500:4012] = photo
    else:
        canvas = np.full((6000, 512, 3), 200, np.uint8)
        canvas[3500:4012] = photo
    with pytest.raises(NoPersonError):  # the premise: the shrunk panorama shows nobody
        extractor(cv2.resize(canvas, None, fx=1024 / 6000, fy=1024 / 6000))
    avatar = prepare_avatar(canvas, frame_size=256, extractor=extractor)
    face = avatar.reference_pose[layout.FACE]
    assert face[:, 2].min() > 0.5
    assert 60 < face[:, 0].mean() < 200 and 30 < face[:, 1].mean() < 150  # framed as usual
    with pytest.raises(NoPersonError):
        prepare_avatar(np.full((512, 3000, 3), 200, np.uint8), extractor=extractor)


def test_mirror_is_an_involution():
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 512, (134, 3)).astype(np.float32)
    np.testing.assert_allclose(layout.mirror(layout.mirror(pts, 512), 512), pts, atol=1e-4)
    perm = layout.MIRROR_PERMUTATION
    assert sorted(perm.tolist()) == list(range(134))
    assert (perm[perm] == np.arange(134)).all()
    assert perm[layout.R_SHOULDER] == layout.L_SHOULDER
    assert perm[layout.face_index(48)] == layout.face_index(54)
    assert perm[layout.LEFT_HAND[3]] == layout.RIGHT_HAND[3]


def _hand(wrist: tuple[float, float], size: float, seed: int) -> np.ndarray:
    """(21, 3) a plausible hand: fingers fanning upwards from the wrist, score 0.9."""
    rng = np.random.default_rng(seed)
    pts = np.zeros((21, 3), np.float32)
    pts[0, :2] = wrist
    for finger in range(5):
        angle = np.deg2rad(-150 + 30 * finger)
        for joint in range(4):
            r = size * (0.35 + 0.17 * joint)
            pts[1 + 4 * finger + joint, :2] = wrist + r * np.array([np.cos(angle), np.sin(angle)])
    pts[:, :2] += rng.normal(0, 0.5, (21, 2))
    pts[:, 2] = 0.9
    return pts


def _pose_with_hands(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    kp = np.zeros((layout.NUM_KEYPOINTS, 3), np.float32)
    kp[layout.LEFT_HAND], kp[layout.RIGHT_HAND] = left, right
    return kp


def test_one_hand_found_as_both_hands_keeps_the_side_of_the_nearer_wrist():
    """Holistic can put both hands on one hand (another person's arm across the body)."""
    hand = _hand((300.0, 300.0), 60.0, seed=0)
    twin = hand.copy()
    twin[:, :2] += 2.0  # the same hand found twice, a little apart
    kp = _pose_with_hands(hand, twin)
    kp[layout.L_WRIST] = (420.0, 330.0, 0.9)  # the left wrist is elsewhere
    kp[layout.R_WRIST] = (298.0, 305.0, 0.9)  # the right wrist is at the hand
    drop_duplicate_hand(kp)
    assert kp[layout.LEFT_HAND, 2].max() == 0 and (kp[layout.LEFT_HAND] == 0).all()
    np.testing.assert_array_equal(kp[layout.RIGHT_HAND], twin)
    # Without wrists the more confident hand stays.
    kp = _pose_with_hands(hand, twin * np.array([1, 1, 0.5], np.float32))
    drop_duplicate_hand(kp)
    np.testing.assert_array_equal(kp[layout.LEFT_HAND], hand)
    assert kp[layout.RIGHT_HAND, 2].max() == 0


def test_clasped_and_separate_hands_are_both_kept():
    right = _hand((300.0, 300.0), 60.0, seed=1)
    left = right.copy()
    left[:, 0] = 610.0 - left[:, 0]  # its mirror image, 10 px over: hands pressed together
    assert np.abs(left[:, :2].mean(0) - right[:, :2].mean(0)).max() < 12  # one shared box
    clasped = _pose_with_hands(left, right)
    for kp in (clasped, _pose_with_hands(_hand((100.0, 300.0), 60.0, 2), right)):
        before = kp.copy()
        drop_duplicate_hand(kp)
        np.testing.assert_array_equal(kp, before)
    one = _pose_with_hands(right, np.zeros((21, 3), np.float32))  # a hand not found: no change
    before = one.copy()
    drop_duplicate_hand(one)
    np.testing.assert_array_equal(one, before)


@pytest.mark.parametrize("kind", ["facing", "profile", "two_people"])
def test_photo_notes_say_what_may_spoil_the_result(extractor, photo, kind):
    """A frontal portrait gets none; a face in profile (the CC0 `camera` photo) and a second,
    smaller face in the frame each get a sentence."""
    if kind == "facing":
        img = photo
    elif kind == "profile":
        img = load_image(Path(__file__).parent / "data" / "camera.png")
    else:
        img = photo.copy()
        other = load_image(Path(__file__).parent / "data" / "grace_hopper.jpg")[:512, :512]
        img[:200, -200:] = cv2.resize(other, (200, 200), interpolation=cv2.INTER_AREA)
    avatar = prepare_avatar(img, frame_size=512, extractor=extractor)
    if kind == "facing":
        assert avatar.notes == ()
        assert face_turn(avatar.face_mesh) < 5
    elif kind == "profile":
        (note,) = avatar.notes
        assert note.startswith("the face is turned about") and "facing" in note
        assert face_turn(avatar.face_mesh) > 45
    else:
        (note,) = avatar.notes
        assert note.startswith("the photo shows 2 faces; one person is animated")
        assert avatar.reference_pose[layout.face_index(30), 0] < 300  # the portrait's own face
