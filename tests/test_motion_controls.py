"""Motion controls: the head, gesture, mouth and blink dials on any driver's keypoints."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from mmgt.drivers.ambient import HEAD, rotate_about
from mmgt.drivers.controls import (
    HEAD_ANCHORS,
    LIDS,
    MOUTH,
    MotionControls,
    _similarity,
    add_motion_arguments,
    apply_motion_controls,
    controls_from_args,
)
from mmgt.drivers.rig import RigCurves, inner_gap, pose_sequence
from mmgt.keypoints import layout
from tests.helpers import synthetic_reference_pose

T = 6
ROLL = np.deg2rad(np.linspace(0.0, 6.0, T))  # (T,)
SHIFT = np.stack([np.linspace(0, 9, T), np.linspace(0, -4, T)], 1)  # (T, 2) pixels


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    ref = synthetic_reference_pose()
    ref[layout.LEFT_HAND, 2] = 0.9  # one hand visible in the photo, the other not
    return ref


@pytest.fixture(scope="module")
def driven(reference) -> np.ndarray:
    """(T, 134, 3) a talking, blinking, gesturing pose sequence with a known rigid head
    motion (roll ``ROLL`` about the chin, then shift ``SHIFT``)."""
    curves = RigCurves.zeros(T)
    curves.opening[:] = np.linspace(0.1, 0.4, T)
    curves.blink[:] = np.linspace(0.0, 1.0, T)
    curves.lift_left[:] = np.linspace(0.0, 0.8, T)
    poses = pose_sequence(reference, curves)
    pivot = reference[layout.face_index(8), :2]
    rotate_about(poses, HEAD, pivot, ROLL, SHIFT[:, None, :])
    poses[:, layout.RIGHT_HAND, :2] += 15.0  # the hand the photo does not show moves too
    return poses


def _head_motion(reference: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    angle, _, shift = _similarity(reference[HEAD_ANCHORS, :2].astype(np.float64),
                                  poses[:, HEAD_ANCHORS, :2].astype(np.float64))  # fmt: skip
    return angle, shift


def test_neutral_controls_change_nothing(reference, driven):
    out = apply_motion_controls(driven, reference, MotionControls())
    np.testing.assert_array_equal(out, driven)
    assert out is not driven
    # Dials at 1 on the full path (gestures alone changed) leave the head where it was.
    out = apply_motion_controls(driven, reference, MotionControls(gestures=0.5))
    np.testing.assert_allclose(out[:, HEAD], driven[:, HEAD], atol=1e-3)


def test_all_dials_at_zero_give_the_photo(reference, driven):
    out = apply_motion_controls(driven, reference, MotionControls(0, 0, 0, 0))
    seen = reference[:, 2] > layout.VISIBILITY_THRESHOLD
    assert np.abs(out[:, seen, :2] - reference[seen, :2]).max() < 1e-3
    np.testing.assert_array_equal(out[..., 2], driven[..., 2])  # scores untouched
    # What the photo does not show keeps the driver's positions.
    np.testing.assert_array_equal(out[:, layout.RIGHT_HAND], driven[:, layout.RIGHT_HAND])


@pytest.mark.parametrize("head", [0.0, 0.5, 2.0])
def test_head_dial_scales_the_rigid_motion_and_keeps_the_speech(reference, driven, head):
    out = apply_motion_controls(driven, reference, MotionControls(head=head))
    angle, shift = _head_motion(reference, driven)
    np.testing.assert_allclose(angle, ROLL, atol=1e-4)  # the fit finds the motion put in
    new_angle, new_shift = _head_motion(reference, out)
    np.testing.assert_allclose(new_angle, head * angle, atol=1e-4)
    np.testing.assert_allclose(new_shift, head * shift, atol=1e-2)
    # The mouth still opens and the lids still close as the driver made them.
    gaps = [inner_gap(p) for p in out]
    np.testing.assert_allclose(gaps, [inner_gap(p) for p in driven], rtol=0.02, atol=0.05)
    np.testing.assert_array_equal(out[:, layout.ARMS], driven[:, layout.ARMS])  # body untouched


def test_mouth_dial_scales_articulation(reference, driven):
    ref_gap = inner_gap(reference)
    gap = np.array([inner_gap(p) for p in driven]) - ref_gap
    for mouth in (0.0, 0.5, 1.5):
        out = apply_motion_controls(driven, reference, MotionControls(mouth=mouth))
        got = np.array([inner_gap(p) for p in out]) - ref_gap
        np.testing.assert_allclose(got, mouth * gap, rtol=0.03, atol=0.1)
        # Eyes and anchors are not the mouth's business.
        np.testing.assert_allclose(out[:, LIDS], driven[:, LIDS], atol=1e-3)


def test_exaggerated_mouth_never_pushes_the_lips_through(reference):
    # A photo with an open mouth, driven closed: 1.5× the closing would cross the lips.
    open_ref = pose_sequence(reference, _curves(opening=0.4))[0]
    open_ref[:, 2] = reference[:, 2]
    closed = pose_sequence(open_ref, _curves(opening=0.0))
    assert inner_gap(closed[0]) < 0.2 * inner_gap(open_ref)
    out = apply_motion_controls(closed, open_ref, MotionControls(mouth=1.5))
    up, low = layout.face_index(np.array([61, 62, 63])), layout.face_index(np.array([67, 66, 65]))
    assert np.all(out[0, low, 1] >= out[0, up, 1] - 1e-3)


def _curves(**values: float) -> RigCurves:
    curves = RigCurves.zeros(1)
    for name, value in values.items():
        getattr(curves, name)[:] = value
    return curves


def test_blink_dial(reference, driven):
    out = apply_motion_controls(driven, reference, MotionControls(blinks=0.0, head=0.0))
    assert np.abs(out[:, LIDS, :2] - reference[LIDS, :2]).max() < 1e-3
    # With the head kept, the lids still ride along with it, open.
    out = apply_motion_controls(driven, reference, MotionControls(blinks=0.0))
    upper, lower = layout.face_index(np.array([37, 38])), layout.face_index(np.array([41, 40]))
    lid_gap = (out[:, lower, 1] - out[:, upper, 1]).mean(1)
    ref_gap = (reference[lower, 1] - reference[upper, 1]).mean()
    np.testing.assert_allclose(lid_gap, ref_gap, rtol=0.02)
    driven_gap = (driven[:, lower, 1] - driven[:, upper, 1]).mean(1)
    assert driven_gap[-1] < 0.2 * ref_gap  # the driver did close them


def test_gesture_dial_scales_displacement_of_what_the_photo_shows(reference, driven):
    wrist = layout.L_WRIST
    moved = driven[:, wrist, :2] - reference[wrist, :2]
    assert np.abs(moved).max() > 5
    for gestures in (0.0, 0.5, 2.0):
        out = apply_motion_controls(driven, reference, MotionControls(gestures=gestures))
        np.testing.assert_allclose(out[:, wrist, :2] - reference[wrist, :2], gestures * moved,
                                   atol=1e-3)  # fmt: skip
        np.testing.assert_array_equal(out[:, layout.RIGHT_HAND], driven[:, layout.RIGHT_HAND])
        np.testing.assert_array_equal(out[:, MOUTH], driven[:, MOUTH])


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"head": 2.5}, "motion 'head' must be a number in 0…2"),
        ({"mouth": -0.1}, "motion 'mouth'"),
        ({"blinks": 1.2}, "0…1"),
        ({"gestures": True}, "motion 'gestures'"),
        ({"gestures": float("nan")}, "motion 'gestures'"),
        ({"head": "1"}, "motion 'head'"),
        ({"smile": 1}, "unknown motion control 'smile'"),
        ([0.5], "an object"),
    ],
)
def test_bad_controls_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        MotionControls().updated(changes)


def test_updates_are_partial_and_flags_parse():
    assert MotionControls(head=np.float32(0.5)).as_dict()["head"] == 0.5  # numpy numbers too
    assert type(MotionControls(head=np.float32(0.5)).head) is float
    with pytest.raises(ValueError, match="motion 'head'"):
        MotionControls(head=np.bool_(True))
    controls = MotionControls(head=0.5).updated({"gestures": 0})
    assert controls == MotionControls(head=0.5, gestures=0.0)
    assert controls.as_dict() == {"head": 0.5, "gestures": 0, "mouth": 1.0, "blinks": 1.0}
    parser = argparse.ArgumentParser()
    add_motion_arguments(parser)
    args = parser.parse_args(["--head-motion", "0.3", "--blinks", "0"])
    assert controls_from_args(args) == MotionControls(head=0.3, blinks=0.0)
    with pytest.raises(ValueError, match="--mouth must be in 0…1.5, got 2"):
        controls_from_args(parser.parse_args(["--mouth", "2"]))


def _still(poses: np.ndarray, reference: np.ndarray) -> bool:
    seen = reference[:, 2] > layout.VISIBILITY_THRESHOLD
    return bool(np.allclose(poses[:, seen, :2], reference[seen, :2], atol=1e-2))


async def test_session_dials_apply_to_rendered_poses_not_to_the_driver_context():
    """Dials set on a live session shape what the renderer draws, from the next posed frame
    on, and survive an interrupt; the poses the driver continues from stay its own."""
    from engine.clock import VirtualClock
    from engine.session import Session
    from mmgt.audio import load_audio
    from mmgt.avatar import BUNDLED_AVATAR
    from tests.engine_fakes import make_scheduler

    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))[: 16000 * 3]
    sched, rec = make_scheduler(realtime=False)
    session = Session(sched, clock=VirtualClock(), idle=False, name="dials")
    still = MotionControls(0.0, 0.0, 0.0, 0.0)
    session.set_motion(still)
    assert session.motion == still  # queued, reported before the worker applies it
    session.push_audio(speech[:16000], 16000, 1)
    frames = 0
    async for item in session:
        frames += type(item).__name__ == "VideoFrame"
        if frames == 20:
            break
    drawn = np.concatenate([p.points for p in rec.poses])
    assert _still(drawn, sched.reference_pose)
    assert not _still(sched._poses, sched.reference_pose)  # the driver's own motion is kept
    await session.interrupt()
    assert session.motion == still and sched.motion == still
    before = len(rec.poses)
    session.set_motion(still.updated({"mouth": 1.0}))
    session.push_audio(speech[16000:], 16000, 1)
    session.finish()
    async for _ in session:
        pass
    drawn = np.concatenate([p.points for p in rec.poses[before:]])
    moved = drawn[:, layout.LIPS, :2] - sched.reference_pose[layout.LIPS, :2]
    assert np.abs(moved).max() > 1.0  # the mouth dial is back at 1: the lips move
    assert _still(drawn[:, layout.ARMS], sched.reference_pose[layout.ARMS])
    await session.aclose()
