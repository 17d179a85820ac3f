"""Evaluation metrics behave as defined on constructed sequences."""

from __future__ import annotations

import numpy as np

from mmgt.drivers import rig
from mmgt.train import metrics
from tests.helpers import synthetic_reference_pose


def _talking(opening: np.ndarray) -> np.ndarray:
    ref = synthetic_reference_pose()
    curves = rig.RigCurves.zeros(len(opening))
    curves.opening = opening
    return rig.pose_sequence(ref, curves)


def test_mouth_opening_reads_back_the_rig():
    opening = 0.3 * np.abs(np.sin(np.arange(100) / 4))
    ref = synthetic_reference_pose()
    np.testing.assert_allclose(metrics.mouth_opening(_talking(opening), ref), opening, atol=1e-3)


def test_lip_sync_finds_the_lag():
    rng = np.random.default_rng(0)
    target = np.convolve(rng.random(200), np.ones(4) / 4, mode="same")
    late = np.roll(target, 2)
    res = metrics.lip_sync(late, target)
    assert res["lag"] == 2 and res["r_at_lag"] > 0.99 > res["r"]
    assert metrics.lip_sync(np.zeros(50), target[:50]) == {"r": 0.0, "lag": 0.0, "r_at_lag": 0.0}


def test_lip_l2_ignores_head_translation_but_not_shape():
    a = _talking(np.full(20, 0.2))
    moved = a.copy()
    moved[:, :, 0] += 7.0
    assert metrics.lip_l2(moved, a) < 1e-4
    assert metrics.lip_l2(_talking(np.full(20, 0.4)), a) > 1.0


def test_jitter_beats_and_diversity():
    still = _talking(np.zeros(50))
    shaky = still + np.random.default_rng(1).normal(0, 1.0, still.shape).astype(np.float32)
    assert metrics.jitter(still) < 1e-6 < metrics.jitter(shaky)
    ref = synthetic_reference_pose()
    # Motion with speed minima at frames 10, 30, 50 aligns with audio beats there.
    t = np.arange(61)
    bob = still[:1].repeat(61, 0).copy()
    bob[:, :, 1] += 5 * np.cos(2 * np.pi * t / 20)[:, None]
    assert metrics.beat_alignment(bob, np.array([10, 30, 50])) > 0.9
    assert metrics.beat_alignment(bob, np.array([5, 25, 45])) < 0.3
    assert metrics.diversity([still, still], [ref, ref]) == 0.0
    assert metrics.diversity([still[:50], bob[:50]], [ref, ref]) > 0.0


def test_ground_truth_description_reads_still_and_moving_motion():
    from mmgt.train.evaluate import describe_ground_truth

    ref = synthetic_reference_pose()
    audio = np.random.default_rng(0).normal(0, 0.1, 16000 * 4).astype(np.float32)
    still = [(audio, np.repeat(ref[None], 100, 0), ref)] * 2
    desc = describe_ground_truth(still)
    assert desc["jitter"] == 0.0 and desc["diversity"] == 0.0 and desc["clips"] == 2
    opening = [0.3 * np.abs(np.sin(np.arange(100) / k)) for k in (3, 5)]
    moving = [(audio, _talking(o), ref) for o in opening]
    desc = describe_ground_truth(moving)
    assert desc["jitter"] == np.mean([metrics.jitter(c[1]) for c in moving]) > 0
