"""The ``warp`` renderer: animates the reference photo itself by keypoint-driven warping.

Per frame it builds one backward map and applies it with a single ``cv2.remap``:

* **face** — a piecewise-affine map over a triangle mesh of the 68 face points and a few
  forehead points, at full resolution inside the face box. Lips and lids are mesh edges, so the
  mouth and eyes open and close cleanly;
* **head** — the ring follows the similarity transform of the stable face points, so hair and
  ears move with the head;
* **body and hands** — a smooth Gaussian (thin-plate-like) interpolation of the visible body
  joints, hand points, face points and ring, on a coarse grid (8 px at 512²) upsampled
  bilinearly; points along the image border are pinned and far pixels stay put;
* the face map fades into the smooth map near the mesh boundary, so there is no visible edge.

Before warping, the target's open lower lip is rounded (:mod:`mouth`); afterwards the mouth
interior (:mod:`mouth`) and closing eyelids (:mod:`face_details`) are painted. The
renderer is frame-wise: one pose in, one frame out, no state between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mmgt.keypoints import layout
from mmgt.keypoints.extractor import MESH_TO_IBUG68, TURNED_AWAY_DEGREES, face_turn
from mmgt.renderers import face_details, mouth, warp_field
from mmgt.types import AudioFeatures, Avatar, KeypointSeq, MaskSet

VISIBLE = layout.VISIBILITY_THRESHOLD
BODY_POINTS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 11])  # neck, arms, hips (the face covers the head)
# Points whose similarity transform defines the head motion: eye corners, nose, brows.
HEAD_POINTS = layout.face_index(np.array([36, 39, 42, 45, 27, 28, 29, 30, 31, 33, 35, 19, 24]))
SMOOTH_POINTS = np.concatenate([layout.FACE, BODY_POINTS, layout.HANDS])
LIP_MIDS = [1, 5]  # the added points of a 7-point lip row (mouth.lip_row)


@dataclass(frozen=True)
class WarpConfig:
    """Warp renderer settings. Radii are relative to the face width (jaw end to jaw end)."""

    grid_cells: int = 64  # coarse grid cells per side for the smooth field (8 px at 512²)
    face_sigma: float = 0.12  # radius of face points in the smooth field
    ring_sigma: float = 0.22  # radius of the head-ring points
    ring_scale: tuple[float, float] = (1.3, 1.6)  # ring radii over face half width / height
    ring_points: int = 20
    body_sigma: float = 0.45  # radius of neck and shoulders
    arm_sigma: float = 0.3  # radius of elbows, wrists and hips
    torso_sigma: float = 0.3  # radius of the torso anchors
    collar_sigma: float = 0.15  # radius of the collar anchors (below the jaw)
    hand_sigma: float = 0.12  # radius of hand points (plus 0.15 × hand length)
    border_points: int = 8  # pinned points per image side
    border_sigma: float = 0.1  # radius of border pins, relative to the frame size
    anchor_weight: float = 0.01  # weight of the implicit "stay put" anchor of the smooth field
    feather: float = 0.1  # face-map fade width at the mesh boundary, relative to face width


@dataclass(frozen=True)
class WarpAvatarState:
    """Per-avatar, read-only state shared by every stream of that avatar."""

    avatar: Avatar
    config: WarpConfig
    reference_pose: np.ndarray  # (134, 3) the avatar's, hidden face points filled from its mesh
    ring: np.ndarray  # (R, 2) head ring in reference pixels
    torso: np.ndarray  # (A, 2) neck and torso anchors: move with the shoulders, hold the body
    border: np.ndarray  # (B, 2) pinned border points
    sigma: np.ndarray  # (len(SMOOTH_POINTS) + R + B,) smooth-field radius per control point
    forehead: np.ndarray  # (F, 2) mesh points above the brows, moved by the head transform
    lip_mids: np.ndarray  # (2, 2) lower-lip mesh points between the landmarks (mouth.lip_row)
    triangles: np.ndarray  # (M, 3) face-mesh triangles over [68 face points, lip mids, forehead]
    xs: np.ndarray  # coarse grid axis (output pixel positions)
    identity_x: np.ndarray  # (S, S) full-resolution identity map
    identity_y: np.ndarray
    feather_px: float
    mouth: mouth.MouthReference


def _visible_face(avatar: Avatar) -> np.ndarray:
    """The reference pose with every face point visible: points its detector was unsure of (as
    DWPose may be about an occluded jaw) are taken from the avatar's face mesh."""
    pose = avatar.reference_pose
    hidden = pose[layout.FACE, 2] < VISIBLE  # (68,)
    if not hidden.any():
        return pose
    if avatar.face_mesh is None:
        raise ValueError("the warp renderer needs all 68 face points of the reference pose")
    pose = pose.copy()
    face = pose[layout.FACE]
    face[hidden, :2] = avatar.face_mesh[MESH_TO_IBUG68[hidden], :2]
    face[hidden, 2] = 1.0
    pose[layout.FACE] = face
    return pose


def _face_width(pose: np.ndarray) -> float:
    jaw = pose[layout.JAW, :2]
    return float(max(np.linalg.norm(jaw[-1] - jaw[0]), 8.0))


def _border_points(size: int, per_side: int) -> np.ndarray:
    t = np.linspace(0, size - 1, per_side, dtype=np.float32)
    zeros, far = np.zeros_like(t), np.full_like(t, size - 1)
    pts = np.concatenate([np.stack(p, 1) for p in ((t, zeros), (t, far), (zeros, t), (far, t))])
    return np.unique(pts, axis=0)


def _head_ring(face: np.ndarray, cfg: WarpConfig) -> np.ndarray:
    """An ellipse of points around the face box, raised to cover the hair; none below the chin."""
    (fx0, fy0), (fx1, fy1) = face.min(0), face.max(0)
    cx, cy = (fx0 + fx1) / 2, (fy0 + fy1) / 2 - 0.2 * (fy1 - fy0)
    rx, ry = cfg.ring_scale[0] * (fx1 - fx0) / 2, cfg.ring_scale[1] * (fy1 - fy0) / 2
    ang = np.linspace(0, 2 * np.pi, cfg.ring_points, endpoint=False)
    ring = np.stack([cx + rx * np.cos(ang), cy + ry * np.sin(ang)], 1).astype(np.float32)
    return ring[ring[:, 1] < fy1 - 0.15 * (fy1 - fy0)]


def _collar_anchors(pose: np.ndarray, face_w: float, size: int) -> np.ndarray:
    """A line of points below the jaw, so jaw and head motion fade out along the neck."""
    collar = pose[layout.JAW[2:15], :2] + np.array([0.0, 0.5 * face_w], np.float32)
    inside = (collar[:, 1] < size) & (collar[:, 0] >= 0) & (collar[:, 0] < size)
    return collar[inside].astype(np.float32)


def _torso_anchors(pose: np.ndarray, face_w: float, size: int) -> np.ndarray:
    """A 3×3 grid inside the torso, so arm gestures do not drag the chest along."""
    rs, ls = pose[layout.R_SHOULDER], pose[layout.L_SHOULDER]
    if rs[2] < VISIBLE or ls[2] < VISIBLE:
        return np.zeros((0, 2), np.float32)
    hips = [pose[h, 1] for h in (layout.R_HIP, layout.L_HIP) if pose[h, 2] >= VISIBLE]
    top = max(rs[1], ls[1]) + 0.4 * face_w
    bottom = min(max(hips) if hips else size, size - 1)
    if bottom <= top:
        return np.zeros((0, 2), np.float32)
    xs = np.linspace(rs[0], ls[0], 5)[1:-1]
    ys = np.linspace(top, bottom, 3)
    return np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2).astype(np.float32)


def _forehead(face: np.ndarray) -> np.ndarray:
    """Points above the brows (iBUG 17, 19, 21, 22, 24, 26), so the mesh covers the forehead."""
    brows = face[[17, 19, 21, 22, 24, 26]]
    up = 0.3 * (face[8, 1] - face[[19, 24], 1].mean())
    return (brows - (0.0, up)).astype(np.float32)


def _far_mouth_end(avatar: Avatar) -> int | None:
    """For a face turned away, the end (0 or -1) of the inner lip rows (corner iBUG 60 … 64)
    further from the camera, by the face mesh's depth; None for a face facing the camera."""
    mesh = avatar.face_mesh
    if mesh is None or face_turn(mesh) < TURNED_AWAY_DEGREES:
        return None
    return -1 if mesh[MESH_TO_IBUG68[64], 2] > mesh[MESH_TO_IBUG68[60], 2] else 0


def _opened(face: np.ndarray) -> np.ndarray:
    """The 68 face points with mouth and eyes pulled open, for a topology with interiors."""
    pts = face.copy()
    width = np.linalg.norm(pts[54] - pts[48]) + 1e-3
    pts[[65, 66, 67], 1] += 0.25 * width
    pts[[55, 56, 57, 58, 59], 1] += 0.25 * width
    pts[[61, 62, 63], 1] -= 0.05 * width
    for upper, lower in (([37, 38], [41, 40]), ([43, 44], [47, 46])):
        eye_w = np.linalg.norm(pts[upper[0]] - pts[lower[0]]) + 1.0
        pts[upper, 1] -= 0.3 * eye_w
        pts[lower, 1] += 0.3 * eye_w
    return pts


class WarpRenderer:
    """Frame-wise renderer that warps the reference photo; see the module docstring."""

    name = "warp"
    needs_masks = False
    needs_audio = False

    def __init__(self, config: WarpConfig | None = None) -> None:
        self.config = config or WarpConfig()

    def prepare(self, avatar: Avatar) -> WarpAvatarState:
        cfg, pose, size = self.config, _visible_face(avatar), avatar.frame_size
        face = pose[layout.FACE]
        face_w = _face_width(pose)
        ring = _head_ring(face[:, :2], cfg)
        forehead = _forehead(face[:, :2])
        border = _border_points(size, cfg.border_points)
        collar = _collar_anchors(pose, face_w, size)
        torso = np.concatenate([collar, _torso_anchors(pose, face_w, size)])
        hand_len = 0.5 * face_w
        for side in (layout.LEFT_HAND, layout.RIGHT_HAND):
            if (pose[side, 2] >= VISIBLE).sum() >= 5:
                hand_len = float(max(np.linalg.norm(pose[side[12], :2] - pose[side[0], :2]), 4))
        body_sigma = np.where(np.isin(BODY_POINTS, [1, 2, 5]), cfg.body_sigma, cfg.arm_sigma)
        sigma = np.concatenate(
            [
                np.full(len(layout.FACE), cfg.face_sigma * face_w),
                body_sigma * face_w,
                np.full(len(layout.HANDS), cfg.hand_sigma * face_w + 0.15 * hand_len),
                np.full(len(ring), cfg.ring_sigma * face_w),
                np.full(len(forehead), cfg.face_sigma * face_w),
                np.full(len(collar), cfg.collar_sigma * face_w),
                np.full(len(torso) - len(collar), cfg.torso_sigma * face_w),
                np.full(len(border), cfg.border_sigma * size),
            ]
        ).astype(np.float32)
        lip_mids = mouth.lip_row(pose, mouth.LOWER)[LIP_MIDS]
        mesh_points = np.concatenate([face[:, :2], lip_mids, forehead])
        opened_face = _opened(face[:, :2])
        opened_mids = mouth.lip_row(opened_face, mouth.LOWER - layout.FACE_START)[LIP_MIDS]
        opened = np.concatenate([opened_face, opened_mids, forehead])
        triangles = warp_field.mesh_triangles(mesh_points, opened)
        cells = max(8, cfg.grid_cells * size // 512)
        xs = warp_field.coarse_axis(size, cells)
        full = np.arange(size, dtype=np.float32)
        gx, gy = np.meshgrid(full, full)
        return WarpAvatarState(
            avatar=avatar,
            config=cfg,
            ring=ring,
            torso=torso,
            border=border,
            sigma=sigma,
            forehead=forehead,
            lip_mids=lip_mids,
            triangles=triangles,
            xs=xs,
            identity_x=gx,
            identity_y=gy,
            feather_px=max(cfg.feather * face_w, 1.5),
            mouth=mouth.prepare_mouth(avatar.image, pose, _far_mouth_end(avatar)),
            reference_pose=pose,
        )

    def open_stream(self, state: WarpAvatarState) -> WarpStream:
        return WarpStream(state)


def _head_transform(ref: np.ndarray, target: np.ndarray) -> np.ndarray:
    """2×3 similarity of the stable face points from reference to target (identity if unseen)."""
    ok = (ref[HEAD_POINTS, 2] >= VISIBLE) & (target[HEAD_POINTS, 2] >= VISIBLE)
    if ok.sum() < 3:
        return np.array([[1, 0, 0], [0, 1, 0]], np.float32)
    return warp_field.similarity_fit(ref[HEAD_POINTS[ok], :2], target[HEAD_POINTS[ok], :2])


def _shoulder_shift(ref: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean motion of neck and shoulders: the torso moves with them (breathing), not the arms."""
    idx = np.array([layout.NECK, layout.R_SHOULDER, layout.L_SHOULDER])
    ok = (ref[idx, 2] >= VISIBLE) & (target[idx, 2] >= VISIBLE)
    if not ok.any():
        return np.zeros(2, np.float32)
    return (target[idx[ok], :2] - ref[idx[ok], :2]).mean(0).astype(np.float32)


def _box(points: np.ndarray, size: int, pad: float) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(points.min(0) - pad).astype(int)
    x1, y1 = np.ceil(points.max(0) + pad).astype(int) + 1
    return max(int(x0), 0), max(int(y0), 0), min(int(x1), size), min(int(y1), size)


def render_frame(state: WarpAvatarState, target: np.ndarray) -> np.ndarray:
    """Render one (S, S, 3) uint8 RGB frame for a (134, 3) target pose in the avatar's frame."""
    pose, lower_lip = mouth.shape_mouth(target, state.mouth)
    map_x, map_y = _maps(state, pose, lower_lip[LIP_MIDS])
    frame = cv2.remap(
        state.avatar.image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mouth.paint_mouth(frame, pose, lower_lip, state.mouth)
    face_details.paint_closed_lids(frame, pose, state.reference_pose, state.mouth.style)
    return frame


def backward_map(state: WarpAvatarState, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y), each (S, S) float32: the reference pixel every output pixel shows."""
    pose, lower_lip = mouth.shape_mouth(target, state.mouth)
    return _maps(state, pose, lower_lip[LIP_MIDS])


def _maps(
    state: WarpAvatarState, target: np.ndarray, lip_mids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`backward_map` of a pose already shaped by :func:`mouth.shape_mouth`; ``lip_mids``
    (2, 2) are its added lower-lip mesh points."""
    ref = state.reference_pose
    size = state.avatar.frame_size
    head = _head_transform(ref, target)
    ring_dst = warp_field.apply_affine(head, state.ring).astype(np.float32)
    # Keypoints that are visible in the reference and the target steer the warp.
    visible = (ref[SMOOTH_POINTS, 2] >= VISIBLE) & (target[SMOOTH_POINTS, 2] >= VISIBLE)
    kp_dst = np.where(visible[:, None], target[SMOOTH_POINTS, :2], ref[SMOOTH_POINTS, :2])
    face_dst = kp_dst[: len(layout.FACE)]

    # 1. Smooth field on the coarse grid → full-resolution map.
    forehead_dst = warp_field.apply_affine(head, state.forehead)
    n_fixed = len(state.ring) + len(state.forehead) + len(state.torso) + len(state.border)
    torso_dst = state.torso + _shoulder_shift(ref, target)
    targets = np.concatenate([kp_dst, ring_dst, forehead_dst, torso_dst, state.border]).astype(
        np.float32
    )
    sources = np.concatenate(
        [ref[SMOOTH_POINTS, :2], state.ring, state.forehead, state.torso, state.border]
    ).astype(np.float32)
    weight = np.concatenate([visible.astype(np.float32), np.ones(n_fixed, np.float32)])
    ux, uy = warp_field.smooth_field(
        state.xs, state.xs, targets, sources, state.sigma, weight, state.config.anchor_weight
    )
    # Upsample the displacement (not the absolute map), so the identity stays exact at borders.
    map_x = state.identity_x + cv2.resize(ux, (size, size), interpolation=cv2.INTER_LINEAR)
    map_y = state.identity_y + cv2.resize(uy, (size, size), interpolation=cv2.INTER_LINEAR)

    # 2. Face mesh at pixel resolution, faded into the smooth map at its boundary.
    if not visible[: len(layout.FACE)].all():  # a face point falls back to the reference
        lip_mids = state.lip_mids
    mesh_dst = np.concatenate([face_dst, lip_mids, forehead_dst]).astype(np.float32)
    mesh_src = np.concatenate([ref[layout.FACE, :2], state.lip_mids, state.forehead])
    mesh_src = mesh_src.astype(np.float32)
    x0, y0, x1, y1 = _box(mesh_dst, size, pad=1)
    if x1 - x0 > 2 and y1 - y0 > 2:
        fx, fy, covered = warp_field.piecewise_affine(
            state.triangles, mesh_dst, mesh_src, (x0, y0, x1, y1)
        )
        alpha = cv2.GaussianBlur(covered, (0, 0), state.feather_px / 2)
        alpha = np.clip(2.0 * alpha - 1.0, 0.0, 1.0) * covered  # 1 inside, 0 at the boundary
        sub_x, sub_y = map_x[y0:y1, x0:x1], map_y[y0:y1, x0:x1]
        sub_x += alpha * (fx - sub_x)
        sub_y += alpha * (fy - sub_y)
    return map_x, map_y


class WarpStream:
    """A frame-wise render stream (window 1, no latency); holds no per-frame state."""

    window = 1
    latency_frames = 0

    def __init__(self, state: WarpAvatarState) -> None:
        self.state = state
        self._closed = False

    def push(
        self,
        poses: KeypointSeq,
        masks: list[MaskSet] | None = None,
        audio: AudioFeatures | None = None,
    ) -> list[np.ndarray]:
        if self._closed:
            raise RuntimeError("render stream is closed")
        if poses.frame_size != self.state.avatar.frame_size:
            poses = poses.resized(self.state.avatar.frame_size)
        return [render_frame(self.state, p) for p in poses.points]

    def flush(self) -> list[np.ndarray]:
        return []

    def close(self) -> None:
        self._closed = True
