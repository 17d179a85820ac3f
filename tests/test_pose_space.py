"""The residual pose space of our trained SMGA models round-trips and removes avatar scale."""

from __future__ import annotations

import numpy as np

from mmgt.drivers import pose_space
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
