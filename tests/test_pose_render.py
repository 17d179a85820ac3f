"""Pose renderer and keypoint normalisation against the official golden fixtures (README G, I)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmgt.keypoints import layout
from mmgt.keypoints.render import (
    BODY_COLORS,
    HAND_EDGE_COLORS,
    LIMB_COLORS,
    render_pose,
    render_pose_sequence,
)
from mmgt.types import KeypointSeq

FIXTURES = Path(__file__).parent / "fixtures/official"


@pytest.fixture(scope="module")
def pose() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "pose_render.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pixels(pose: dict[str, np.ndarray]) -> np.ndarray:
    """(6, 134, 3) float32 renderer input: denormalize(normalized), as audio2vid feeds it."""
    return layout.denormalize(pose["normalized"])


# --- normalisation (layout.py) ----------------------------------------------------------------


def test_normalize_matches_official(pose: dict[str, np.ndarray]) -> None:
    kp = pose["keypoints_px"].astype(np.float64)  # float16 storage is lossless
    np.testing.assert_array_equal(layout.normalize(kp), pose["normalized"])


def test_mask_legs_matches_official(pose: dict[str, np.ndarray]) -> None:
    got = layout.mask_legs(pose["normalized"], normalized=True)
    np.testing.assert_array_equal(got, pose["normalized_legmasked"])


def test_denormalize_matches_official_bitwise(pose: dict[str, np.ndarray]) -> None:
    got = layout.denormalize(pose["normalized"])
    assert got.dtype == np.float32 and got.shape == (6, 134, 3)
    np.testing.assert_array_equal(got.reshape(6, 402), pose["denormalized"])


# --- renderer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", range(6))
def test_pose_image_bitwise(pixels: np.ndarray, pose: dict[str, np.ndarray], frame: int) -> None:
    img = render_pose(pixels[frame])
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, pose["pose_u8"][frame])


def test_render_sequence(pose: dict[str, np.ndarray]) -> None:
    seq = KeypointSeq.from_official(pose["normalized"])
    np.testing.assert_array_equal(render_pose_sequence(seq), pose["pose_u8"])


def test_draw_arguments_follow_visibility_rules(
    pixels: np.ndarray, pose: dict[str, np.ndarray]
) -> None:
    """Body joints shown iff score > 0.3 (after leg masking); others hidden (−1) iff < 0.3."""
    pts = layout.mask_legs(pixels)
    score = pts[..., 2]
    subset = np.where(score[:, :18] > 0.3, np.arange(18, dtype=np.float32), -1)
    np.testing.assert_array_equal(subset, pose["draw_body_subset"])
    np.testing.assert_array_equal(pts[:, :18, :2] / 512, pose["draw_body_candidate"])

    def hidden(idx: np.ndarray) -> np.ndarray:
        xy = pts[:, idx, :2] / np.float32(512)
        return np.where(score[:, idx, None] < 0.3, np.float32(-1), xy)

    hands = np.stack([hidden(layout.LEFT_HAND), hidden(layout.RIGHT_HAND)], axis=1)
    np.testing.assert_array_equal(hands, pose["draw_hands"])
    np.testing.assert_array_equal(hidden(layout.FACE), pose["draw_faces"])
    np.testing.assert_array_equal(hidden(layout.LIPS), pose["draw_lips"])


def test_colour_tables_match_readme() -> None:
    dimmed = [
        (229, 0, 0),
        (229, 76, 0),
        (229, 153, 0),
        (229, 229, 0),
        (153, 229, 0),
        (76, 229, 0),
        (0, 229, 0),
        (0, 229, 76),
        (0, 229, 153),
        (0, 229, 229),
        (0, 153, 229),
        (0, 76, 229),
        (0, 0, 229),
        (76, 0, 229),
        (153, 0, 229),
        (229, 0, 229),
        (229, 0, 153),
    ]
    edges = [
        (0, 0, 255),
        (0, 76, 255),
        (0, 153, 255),
        (0, 229, 255),
        (0, 255, 203),
        (0, 255, 127),
        (0, 255, 51),
        (25, 255, 0),
        (102, 255, 0),
        (178, 255, 0),
        (255, 255, 0),
        (255, 178, 0),
        (255, 102, 0),
        (255, 25, 0),
        (255, 0, 50),
        (255, 0, 127),
        (255, 0, 204),
        (229, 0, 255),
        (152, 0, 255),
        (76, 0, 255),
    ]
    assert LIMB_COLORS.tolist() == [list(c) for c in dimmed]
    assert HAND_EDGE_COLORS.tolist() == [list(c) for c in edges]


def test_legs_option_draws_knees_and_ankles(pixels: np.ndarray) -> None:
    masked, full = render_pose(pixels[0]), render_pose(pixels[0], legs=True)
    knee = tuple(BODY_COLORS[layout.R_KNEE])
    assert not (masked == knee).all(axis=2).any()
    assert (full == knee).all(axis=2).sum() > 20
    # Only the leg region changes: everything above the hips is identical.
    top = int(pixels[0, [layout.R_HIP, layout.L_HIP], 1].min()) - 10
    np.testing.assert_array_equal(masked[:top], full[:top])


def test_hidden_and_invalid_points() -> None:
    blank = np.zeros((134, 3), np.float32)
    assert not render_pose(blank).any()
    junk = np.full((134, 3), np.nan, np.float32)
    assert not render_pose(junk).any()
    # A face point at score exactly 0.3 is drawn; a body joint at 0.3 is not.
    pts = np.zeros((134, 3), np.float32)
    pts[layout.NOSE] = (100.5, 100.5, 0.3)
    pts[layout.FACE[0]] = (300.5, 300.5, 0.3)
    img = render_pose(pts)
    assert not img[90:111, 90:111].any()
    assert (img[300, 300] == 255).all()
    # Far-away points do not crash OpenCV.
    pts[layout.LEFT_HAND] = (1e12, -1e12, 1.0)
    render_pose(pts)


@pytest.mark.parametrize("size", [256, 384, 1024])
def test_other_frame_sizes_keep_stroke_sizes(size: int) -> None:
    pts = np.zeros((134, 3), np.float32)
    pts[layout.NOSE] = (size / 2 + 0.25, size / 2 + 0.25, 1.0)
    pts[layout.FACE[0]] = (size / 4 + 0.25, size / 4 + 0.25, 1.0)
    img = render_pose(pts, size)
    assert img.shape == (size, size, 3)
    nose = (img == tuple(BODY_COLORS[0])).all(axis=2).sum()
    face = (img == 255).all(axis=2).sum()
    ref = render_pose(np.where(np.arange(3) < 2, pts * (512 / size), pts).astype(np.float32))
    assert nose == (ref == tuple(BODY_COLORS[0])).all(axis=2).sum()  # r = 4 at every size
    assert face == (ref == 255).all(axis=2).sum()  # r = 3 at every size
