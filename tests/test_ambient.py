"""Ambient motion (blinks, head sway, breathing): seeded and window-independent; the SMGA
driver lays it over the model's output and takes it off again before committed frames become
the model's context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers import ambient, make_driver
from mmgt.drivers.ambient import AmbientMotion
from mmgt.drivers.smga import SamplerSettings, SMGADriver
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, preset
from mmgt.renderers.face_details import EYES, eye_openness

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"
UPPER_LIDS = layout.face_index(np.array([up for up, _ in ambient.LIDS]))


@pytest.fixture(scope="module")
def reference_pose() -> np.ndarray:
    return load_avatar().reference_pose


@pytest.fixture(scope="module")
def features():
    return extract_light_features(load_audio(SPEECH)[: 16000 * 12])  # 300 frames


def test_blink_schedule_is_the_same_in_any_window():
    frames = np.arange(0, 600)
    whole = ambient.blink_closure(frames, 25.0, seed=4)
    parts = [ambient.blink_closure(frames[a : a + 37], 25.0, seed=4) for a in range(0, 600, 37)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    peaks = np.flatnonzero(whole == 1.0)
    assert 5 <= len(peaks) <= 9  # about one blink per 3 s over 24 s
    assert not np.array_equal(ambient.blink_closure(frames, 25.0, seed=5), whole)


def test_lids_close_and_open_again_exactly(reference_pose):
    poses = np.repeat(reference_pose[None], 3, 0).copy()
    closure = np.array([0.0, 1.0, 0.5])
    ambient.move_lids(poses, reference_pose, closure)
    eye = EYES[0]
    assert eye_openness(poses[1], eye) < 0.1 * eye_openness(reference_pose, eye)
    np.testing.assert_array_equal(poses[0], reference_pose)
    ambient.move_lids(poses, reference_pose, -closure)
    np.testing.assert_allclose(poses, np.repeat(reference_pose[None], 3, 0), atol=1e-4)


def test_ambient_motion_comes_off_exactly_and_moves_the_head_rigidly(reference_pose):
    motion = AmbientMotion(seed=3)
    poses = np.repeat(reference_pose[None], 200, 0).copy()
    motion.apply(poses, reference_pose, start=1000, fps=25.0)
    head = np.setdiff1d(ambient.HEAD, UPPER_LIDS)  # the upper lids also blink
    a, b = head[:, None], head[None, :]
    dist = np.linalg.norm(poses[:, a, :2] - poses[:, b, :2], axis=-1)  # (T, H, H)
    ref_dist = np.linalg.norm(reference_pose[a, :2] - reference_pose[b, :2], axis=-1)
    np.testing.assert_allclose(dist, np.broadcast_to(ref_dist, dist.shape), atol=1e-3)
    assert np.ptp(poses[:, layout.face_index(30), 0]) > 2.0  # the head sways
    assert np.ptp(poses[:, layout.NECK, 1]) > 0.3  # the chest breathes
    hips = [layout.R_HIP, layout.L_HIP]
    np.testing.assert_array_equal(poses[:, hips], np.repeat(reference_pose[None, hips], 200, 0))
    motion.apply(poses, reference_pose, start=1000, fps=25.0, undo=True)
    np.testing.assert_allclose(poses, np.repeat(reference_pose[None], 200, 0), atol=1e-3)
    # Window-independent: a slice of the curves equals the curves of the slice.
    whole = motion.curves(np.arange(1000, 1200), 25.0)
    part = motion.curves(np.arange(1050, 1080), 25.0)
    for key, values in part.items():
        np.testing.assert_array_equal(values, whole[key][50:80])


def test_smga_driver_overlays_ambient_motion_and_feeds_the_model_its_own(reference_pose, features):
    torch.manual_seed(0)
    model = SMGA(preset("tiny"))
    feats = features.frames(0, 60)
    settings = SamplerSettings(steps=2, eta=0.0, context=4, seed=2)
    motion = AmbientMotion(seed=2)
    on = SMGADriver(model, feature_kind="light-v1", settings=settings, ambient=motion)
    off = SMGADriver(model, feature_kind="light-v1", settings=settings)
    assert ambient.blink_closure(np.arange(60), feats.fps, seed=2).max() == 1.0

    def overlay(points: np.ndarray, start: int) -> np.ndarray:
        out = points.copy()
        motion.apply(out, reference_pose, start, feats.fps)
        return out

    whole_on, whole_off = on.generate(feats, reference_pose), off.generate(feats, reference_pose)
    np.testing.assert_allclose(whole_on.points, overlay(whole_off.points, 0), atol=1e-4)
    # Continuing from committed (moving) frames gives the same motion as without the overlay.
    more_on = on.generate(feats.frames(0, 60), reference_pose, whole_on.frames(0, 30))
    more_off = off.generate(feats.frames(0, 60), reference_pose, whole_off.frames(0, 30))
    np.testing.assert_allclose(more_on.points, overlay(more_off.points, 30), atol=1e-3)


def test_the_shipped_model_blinks_and_sways_only_with_ambient_motion(reference_pose, features):
    """A few-step sampler averages blinks and sway away; the overlay puts them back."""
    with_ambient = make_driver("smga").generate(features, reference_pose).points
    model_only = make_driver("smga", ambient=False).generate(features, reference_pose).points

    def lid_gaps(points: np.ndarray) -> np.ndarray:
        return np.array([eye_openness(p, EYES[0]) for p in points])

    own = lid_gaps(model_only) / np.median(lid_gaps(model_only))
    assert own.min() > 0.5 and (own < 0.7).mean() < 0.02  # at most a rare half blink (0.67)
    shut = lid_gaps(with_ambient) < 0.3 * np.median(lid_gaps(with_ambient))
    assert shut.sum() >= 3 and (~shut).mean() > 0.9

    def head_motion(points: np.ndarray) -> float:
        return float(points[:, layout.face_index(30), :2].std(0).mean())

    assert head_motion(with_ambient) > 2.0 * head_motion(model_only)
