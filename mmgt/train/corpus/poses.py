"""Reference poses (the avatar's rest pose) for synthetic clips, and random variants of them.

``data/reference_poses.npz`` ships four (134, 3) poses in a 512 frame: ``astronaut`` (the bundled
photo, extracted once with MediaPipe) and three synthetic ones built from its face on drawn
bodies — ``presenter`` (hands up in front of the chest, mouth closed), ``closeup`` (large face,
arms out of frame) and ``wide`` (small figure, arms down with hands visible, smiling open mouth).
``python -m mmgt.train.corpus.poses`` rebuilds the file (needs mediapipe).

:func:`random_reference` makes variants so a model trained on them generalises across avatars:
mirroring, head size 0.7–1.3× about the face, shoulder width and arm length, a small rotation
about the neck, a shift, hands shown or hidden (score 0), and the mouth closed / smiling open /
as it is. Points that leave the frame get score 0.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from mmgt.drivers import rig
from mmgt.keypoints import layout

DATA = Path(__file__).resolve().parent / "data" / "reference_poses.npz"
FRAME = layout.OFFICIAL_FRAME
_F = layout.face_index
HEAD = np.concatenate([layout.FACE, [layout.NOSE, 14, 15, 16, 17]])
# OpenPose hand (person's right hand, palm to camera, fingers up) in hand lengths, wrist at 0.
_HAND = np.array(
    [(0, 0), (-0.12, -0.10), (-0.22, -0.22), (-0.30, -0.33), (-0.36, -0.42),
     (-0.10, -0.45), (-0.11, -0.62), (-0.12, -0.74), (-0.12, -0.84),
     (0.0, -0.47), (0.0, -0.66), (0.0, -0.79), (0.0, -0.90),
     (0.09, -0.45), (0.10, -0.62), (0.11, -0.73), (0.12, -0.82),
     (0.17, -0.40), (0.20, -0.53), (0.22, -0.61), (0.24, -0.68)]
)  # fmt: skip


@functools.cache
def reference_poses() -> dict[str, np.ndarray]:
    """Name → (134, 3) float32 pose of the shipped references."""
    with np.load(DATA) as data:
        return {k: data[k].astype(np.float32) for k in data.files}


def hand_points(wrist: np.ndarray, angle: float, length: float, right: bool) -> np.ndarray:
    """(21, 2) hand keypoints; ``angle`` rotates the fingers from pointing up (radians)."""
    pts = _HAND * length * (1.0 if right else np.array([-1.0, 1.0]))
    c, s = np.cos(angle), np.sin(angle)
    return wrist + pts @ np.array([[c, s], [-s, c]])


def set_hands(pose: np.ndarray, visible: bool, rng: np.random.Generator | None = None) -> None:
    """Show template hands at visible wrists (pointing along the forearm), or hide both hands."""
    pose[layout.HANDS, 2] = 0.0
    if not visible:
        return
    length = 0.85 * rig.face_width(pose)
    for wrist, elbow, hand, right in (
        (layout.R_WRIST, layout.R_ELBOW, layout.RIGHT_HAND, True),
        (layout.L_WRIST, layout.L_ELBOW, layout.LEFT_HAND, False),
    ):
        if min(pose[wrist, 2], pose[elbow, 2]) < layout.VISIBILITY_THRESHOLD:
            continue
        dx, dy = pose[wrist, :2] - pose[elbow, :2]
        angle = np.arctan2(dx, -dy) + (rng.normal(0, 0.2) if rng is not None else 0.0)
        pose[hand, :2] = hand_points(pose[wrist, :2], angle, length, right)
        pose[hand, 2] = 0.9


def set_mouth(pose: np.ndarray, mode: str) -> np.ndarray:
    """``closed``: lips together; ``smile``: open (0.2 mouth widths), wider, corners up."""
    curves = rig.RigCurves.zeros(1)
    if mode == "smile":
        curves.opening[:] = 0.2
        curves.spread[:] = 0.06
    out = rig.pose_sequence(pose, curves)[0]
    if mode == "smile":
        out[_F(np.array([48, 54, 60, 64])), 1] -= 0.08 * rig.mouth_width(pose)
    return out


def _body(neck: np.ndarray, fw: float, arms: str) -> np.ndarray:
    """Body keypoints 0–23 (x, y, score) drawn in face widths around the neck."""
    pose = np.zeros((24, 3), np.float32)
    offsets = {1: (0, 0), 2: (-1.02, 0.05), 5: (1.02, 0.05), 8: (-0.5, 2.9), 11: (0.5, 2.9)}
    offsets |= {9: (-0.5, 5.0), 12: (0.5, 5.0), 10: (-0.5, 7.0), 13: (0.5, 7.0)}
    if arms == "down":
        offsets |= {3: (-1.17, 1.5), 6: (1.17, 1.5), 4: (-1.22, 2.85), 7: (1.22, 2.85)}
    else:  # hands up in front of the chest
        offsets |= {3: (-1.3, 2.1), 6: (1.3, 2.15), 4: (-0.85, 1.55), 7: (0.9, 1.6)}
    for k, (dx, dy) in offsets.items():
        pose[k] = (neck[0] + dx * fw, neck[1] + dy * fw, 0.0 if k in (9, 10, 12, 13) else 0.95)
    return pose


def build_reference_poses(astronaut: np.ndarray) -> dict[str, np.ndarray]:
    """The shipped set: the astronaut plus three poses built from its face."""
    astro = np.asarray(astronaut, np.float32)
    fw0, neck0 = rig.face_width(astro), astro[layout.NECK, :2]
    out = {"astronaut": astro}
    for name, fw, neck, arms, hands, mouth in (
        ("presenter", 80.0, (256, 250), "gesture", True, "closed"),
        ("closeup", 150.0, (256, 390), "down", False, None),
        ("wide", 60.0, (256, 200), "down", True, "smile"),
    ):
        pose = np.zeros((layout.NUM_KEYPOINTS, 3), np.float32)
        pose[:24] = _body(np.array(neck, np.float32), fw, arms)
        pose[HEAD] = astro[HEAD]
        pose[HEAD, :2] = np.asarray(neck) + (astro[HEAD, :2] - neck0) * (fw / fw0)
        set_hands(pose, hands)
        if mouth:
            pose = set_mouth(pose, mouth)
        out[name] = _clip_to_frame(pose)
    return out


def _clip_to_frame(pose: np.ndarray) -> np.ndarray:
    outside = np.any((pose[:, :2] < 0) | (pose[:, :2] >= FRAME), axis=1)
    pose[outside, 2] = 0.0
    return pose


def validate_reference(pose: np.ndarray) -> None:
    """Raise ValueError unless ``pose`` is a usable (134, 3) reference in a 512 frame."""
    pose = np.asarray(pose)
    if pose.shape != (layout.NUM_KEYPOINTS, 3) or not np.isfinite(pose).all():
        raise ValueError(f"reference must be finite (134, 3), got {pose.shape}")
    if pose[:, 2].min() < 0 or pose[:, 2].max() > 1:
        raise ValueError("scores must lie in [0, 1]")
    face = pose[layout.FACE]
    if (face[:, 2] < layout.VISIBILITY_THRESHOLD).any():
        raise ValueError("every face point must be visible")
    if (face[:, :2] < 0).any() or (face[:, :2] >= FRAME).any():
        raise ValueError("the face must lie inside the frame")
    if not 20 <= rig.face_width(pose) <= 300 or rig.mouth_width(pose) < 5:
        raise ValueError("implausible face or mouth size")


def _transform(pose: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = pose.copy()
    neck = out[layout.NECK, :2].copy()
    face_c = out[layout.FACE, :2].mean(0)
    out[HEAD, :2] = face_c + (out[HEAD, :2] - face_c) * rng.uniform(0.7, 1.3)
    # Shoulder width and arm length about the neck / shoulders.
    width, arm = rng.uniform(0.85, 1.15), rng.uniform(0.9, 1.1)
    for shoulder, chain in ((2, [3, 4, *layout.RIGHT_HAND]), (5, [6, 7, *layout.LEFT_HAND])):
        old = out[shoulder, :2].copy()
        out[shoulder, 0] = neck[0] + (old[0] - neck[0]) * width
        out[chain, :2] = out[shoulder, :2] + (out[chain, :2] - old) * arm
    angle = np.deg2rad(rng.uniform(-6, 6))
    c, s = np.cos(angle), np.sin(angle)
    out[:, :2] = neck + (out[:, :2] - neck) @ np.array([[c, s], [-s, c]])
    out[:, :2] += rng.uniform(-40, 40, 2)
    return out


def random_reference(rng: np.random.Generator, base: str | None = None) -> tuple[str, np.ndarray]:
    """(base name, a random valid variant of that shipped reference)."""
    poses = reference_poses()
    name = base or str(rng.choice(sorted(poses)))
    pose = poses[name].copy()
    if rng.random() < 0.5:
        pose = layout.mirror(pose, FRAME)
    hands_now = (pose[layout.HANDS, 2] >= layout.VISIBILITY_THRESHOLD).sum() >= 5
    if rng.random() < 0.3:
        set_hands(pose, not hands_now, rng)
    mouth = rng.choice(["closed", "smile", "keep"], p=[0.4, 0.25, 0.35])
    if mouth != "keep":
        pose = set_mouth(pose, str(mouth))
    for _ in range(20):
        candidate = _clip_to_frame(_transform(pose, rng))
        try:
            validate_reference(candidate)
        except ValueError:
            continue
        return name, candidate.astype(np.float32)
    return name, pose.astype(np.float32)


def main() -> None:  # pragma: no cover - development tool (needs mediapipe)
    from mmgt.avatar import load_avatar  # noqa: PLC0415

    poses = build_reference_poses(load_avatar().reference_pose)
    DATA.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(DATA, **poses)


if __name__ == "__main__":  # pragma: no cover
    main()
