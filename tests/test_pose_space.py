"""The residual pose space of our trained SMGA models round-trips and removes avatar scale."""

from __future__ import annotations

import numpy as np

from mmgt.drivers import pose_space, rig
from mmgt.keypoints import layout
from tests.helpers import synthetic_reference_pose


def test_round_trip_and_scale_invariance():
    ref = synthetic_reference_pose()
    rng = np.random.default_rng(0)
    poses = ref[None] + rng.normal(0, 2.0, (10, 134, 3)).astype(np.float32)
    poses[..., 2] = ref[:, 2]
    std = np.full(402, 0.02, np.float32)
    ref_n, poses_n = layout.normalize(ref), layout.normalize(poses)
    res = pose_space.to_residual(poses_n, ref_n, std)
    np.testing.assert_allclose(pose_space.from_residual(res, ref_n, std), poses_n, atol=1e-6)
    # The same motion on an avatar twice as large gives the same residuals.
    big_ref, big_poses = ref.copy(), poses.copy()
    big_ref[:, :2] *= 2
    big_poses[..., :2] *= 2
    res_big = pose_space.to_residual(layout.normalize(big_poses), layout.normalize(big_ref), std)
    np.testing.assert_allclose(res_big, res, atol=1e-4)
    # Score channels never move: their std is floored, their residual is zero.
    est = pose_space.residual_std([poses_n], [ref_n])
    assert est[2::3].max() == pose_space.STD_FLOOR and np.abs(res[..., 2::3]).max() == 0


def test_closed_mouth_anchor_closes_the_lips_and_nothing_else():
    ref = synthetic_reference_pose()
    ref_n = layout.normalize(ref)
    gap_before = rig.inner_gap(ref)
    assert gap_before > 1.0  # the synthetic reference's mouth is open
    closed_n = pose_space.closed_mouth(ref_n)
    closed = layout.denormalize(closed_n).reshape(134, 3)
    assert abs(rig.inner_gap(closed)) < 0.05
    moved = np.flatnonzero(np.abs(closed_n - ref_n) > 0) // 3
    allowed = set(layout.LIPS) | set(layout.face_index(np.arange(3, 14)))
    assert set(moved) <= allowed and set(layout.LIPS) & set(moved)
    # The rig's own silence target has zero residual on every channel.
    silent = layout.normalize(rig.pose_sequence(ref, rig.RigCurves.zeros(3)))
    std = np.full(402, 0.02, np.float32)
    res = pose_space.to_residual(silent, ref_n, std, "closed-mouth")
    assert np.abs(res).max() < 1e-3
    back = pose_space.from_residual(res, ref_n, std, "closed-mouth")
    np.testing.assert_allclose(back, silent, atol=1e-6)
    # Batched references give the same anchors as one at a time.
    batch = np.stack([ref_n, layout.normalize(ref * (1.2, 1.2, 1))])
    np.testing.assert_array_equal(pose_space.closed_mouth(batch)[0], closed_n)
