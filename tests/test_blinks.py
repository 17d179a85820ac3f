"""Blinks: one seeded schedule for every driver; the SMGA driver lays it over the model's eyes
and takes it off again before committed frames become the model's context."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers import blinks, make_driver
from mmgt.drivers.smga import SamplerSettings, SMGADriver
from mmgt.keypoints import layout
from mmgt.models.smga import SMGA, preset
from mmgt.renderers.face_details import EYES, eye_openness

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"
UPPER_LIDS = layout.face_index(np.array([up for up, _ in blinks.LIDS]))


@pytest.fixture(scope="module")
def reference_pose() -> np.ndarray:
    return load_avatar().reference_pose


@pytest.fixture(scope="module")
def features():
    return extract_light_features(load_audio(SPEECH)[: 16000 * 12])  # 300 frames


def test_schedule_is_the_same_in_any_window():
    frames = np.arange(0, 600)
    whole = blinks.blink_closure(frames, 25.0, seed=4)
    parts = [blinks.blink_closure(frames[a : a + 37], 25.0, seed=4) for a in range(0, 600, 37)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    peaks = np.flatnonzero(whole == 1.0)
    assert 5 <= len(peaks) <= 9  # about one blink per 3 s over 24 s
    assert not np.array_equal(blinks.blink_closure(frames, 25.0, seed=5), whole)


def test_lids_close_and_open_again_exactly(reference_pose):
    poses = np.repeat(reference_pose[None], 3, 0).copy()
    closure = np.array([0.0, 1.0, 0.5])
    blinks.move_lids(poses, reference_pose, closure)
    eye = EYES[0]
    assert eye_openness(poses[1], eye) < 0.1 * eye_openness(reference_pose, eye)
    np.testing.assert_array_equal(poses[0], reference_pose)
    blinks.move_lids(poses, reference_pose, -closure)
    np.testing.assert_allclose(poses, np.repeat(reference_pose[None], 3, 0), atol=1e-4)


def test_smga_driver_overlays_blinks_and_feeds_the_model_its_own_motion(reference_pose, features):
    torch.manual_seed(0)
    model = SMGA(preset("tiny"))
    feats = features.frames(0, 60)
    settings = SamplerSettings(steps=2, eta=0.0, context=4, seed=2)
    on = SMGADriver(model, feature_kind="light-v1", settings=settings, blinks=True)
    off = SMGADriver(model, feature_kind="light-v1", settings=settings)
    closure = blinks.blink_closure(np.arange(60), feats.fps, seed=2)
    assert closure.max() == 1.0

    def overlay(points: np.ndarray, start: int) -> np.ndarray:
        out = points.copy()
        blinks.move_lids(out, reference_pose, closure[start : start + len(points)])
        return out

    whole_on, whole_off = on.generate(feats, reference_pose), off.generate(feats, reference_pose)
    np.testing.assert_allclose(whole_on.points, overlay(whole_off.points, 0), atol=1e-4)
    moved = np.abs(whole_on.points - whole_off.points).max(axis=(0, 2)) > 0
    assert set(np.flatnonzero(moved)) == set(UPPER_LIDS.tolist())
    # Continuing from committed (blinking) frames gives the same motion as without blinks.
    more_on = on.generate(feats.frames(0, 60), reference_pose, whole_on.frames(0, 30))
    more_off = off.generate(feats.frames(0, 60), reference_pose, whole_off.frames(0, 30))
    np.testing.assert_allclose(more_on.points, overlay(more_off.points, 30), atol=1e-3)


def test_the_shipped_model_blinks_only_with_the_overlay(reference_pose, features):
    """A few-step sampler averages blinks away; the overlay puts them back."""

    def lid_gaps(driver) -> np.ndarray:  # noqa: ANN001
        points = driver.generate(features, reference_pose).points
        return np.array([eye_openness(p, EYES[0]) for p in points])

    with_overlay, model_only = (
        lid_gaps(make_driver("smga")),
        lid_gaps(make_driver("smga", blinks=False)),
    )
    assert model_only.min() > 0.7 * np.median(model_only)
    shut = with_overlay < 0.3 * np.median(with_overlay)
    assert shut.sum() >= 3 and (~shut).mean() > 0.9
