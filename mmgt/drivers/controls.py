"""Motion controls: scale how much the head, the arms and hands, the mouth and the lids move.

Any driver's keypoints pass through :func:`apply_motion_controls` on their way to the
renderer, so the same four dials work for the procedural driver, the shipped SMGA model and the
official one, offline and live. Each dial scales the motion *relative to the photo's own pose*
(1 = as the driver made it, 0 = as in the photo):

* ``head`` — the head's rigid motion (shift, roll and scale, fitted per frame to the eye
  corners, nose bridge and jaw ends), up to 2× (livelier);
* ``gestures`` — the body, arms and hands: each point's displacement from the photo, up to 2×;
* ``mouth`` — lip and jaw articulation inside the head's own frame, up to 1.5× (the inner
  lips never cross);
* ``blinks`` — eyelid motion, 0 (no blinks) to 1.

Points the photo does not show (score below the visibility threshold) have no position to
scale towards and are left as the driver made them. The stored motion is not changed: a live
driver keeps seeing its own uncontrolled frames as context, so a dial can move mid-stream
without the model drifting.
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from mmgt.drivers.ambient import HEAD
from mmgt.errors import short_repr
from mmgt.keypoints import layout

_F = layout.face_index
# Points that move with the skull but not with speech or blinks: the rigid fit's anchors.
HEAD_ANCHORS = _F(np.array([0, 1, 15, 16, 27, 28, 29, 30, 36, 39, 42, 45]))
MOUTH = np.concatenate([_F(np.arange(3, 14)), layout.LIPS])  # chin and lips
LIDS = _F(np.array([37, 38, 40, 41, 43, 44, 46, 47]))
INNER_LIP_PAIRS = ((_F(61), _F(67)), (_F(62), _F(66)), (_F(63), _F(65)))  # (upper, lower)
NOT_HEAD = np.setdiff1d(np.arange(layout.NUM_KEYPOINTS), HEAD)  # neck, body, feet, hands
_IN_HEAD = np.full(layout.NUM_KEYPOINTS, -1)
_IN_HEAD[HEAD] = np.arange(len(HEAD))  # keypoint index → its row among the head's points

LIMITS = {"head": 2.0, "gestures": 2.0, "mouth": 1.5, "blinks": 1.0}
FLAGS = {"head": "--head-motion", "gestures": "--gestures", "mouth": "--mouth",
         "blinks": "--blinks"}  # fmt: skip


def _finite_float(value: object) -> float | None:
    """``value`` as a finite float, or None: not a real number (booleans are not), NaN, ±inf,
    or an integer too large for a float (JSON allows any)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class MotionControls:
    """Scales of the driver's motion relative to the photo (1 = unchanged, 0 = still)."""

    head: float = 1.0
    gestures: float = 1.0
    mouth: float = 1.0
    blinks: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            number = _finite_float(value)
            if number is None or not 0.0 <= number <= LIMITS[f.name]:
                raise ValueError(
                    f"motion '{f.name}' must be a number in 0…{LIMITS[f.name]:g}, "
                    f"got {short_repr(value)}"
                )
            object.__setattr__(self, f.name, number)  # plain floats (JSON, equality)

    @property
    def neutral(self) -> bool:
        """Whether the controls leave the motion exactly as the driver made it."""
        return all(getattr(self, f.name) == 1.0 for f in fields(self))

    def updated(self, changes: dict) -> MotionControls:
        """These controls with ``changes`` (a subset of the fields) applied; ``ValueError``
        names an unknown field or a value out of range."""
        if not isinstance(changes, dict):
            raise ValueError('motion controls are an object such as {"head": 0.5}')
        unknown = sorted(set(changes) - set(LIMITS))
        if unknown:
            raise ValueError(f"unknown motion control {unknown[0]!r} (known: {', '.join(LIMITS)})")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame least-squares similarity from (N, 2) ``src`` to (T, N, 2) ``dst`` (Umeyama,
    2-D): returns angle (T,), log-scale (T,) and the centroids' shift (T, 2)."""
    src_mean = src.mean(0)  # (2,)
    dst_mean = dst.mean(1)  # (T, 2)
    a, b = src - src_mean, dst - dst_mean[:, None]  # (N, 2), (T, N, 2)
    dot = (a[None, :, 0] * b[..., 0] + a[None, :, 1] * b[..., 1]).sum(1)  # (T,)
    cross = (a[None, :, 0] * b[..., 1] - a[None, :, 1] * b[..., 0]).sum(1)  # (T,)
    angle = np.arctan2(cross, dot)
    scale = np.hypot(dot, cross) / max(float((a**2).sum()), 1e-9)
    return angle, np.log(np.maximum(scale, 1e-6)), dst_mean - src_mean


def _transform(points: np.ndarray, centre: np.ndarray, angle, log_scale, shift) -> np.ndarray:
    """Rotate and scale (T, N, 2) ``points`` about (2,) ``centre``, then add (T, 2) ``shift``."""
    cos = (np.exp(log_scale) * np.cos(angle))[:, None]  # (T, 1)
    sin = (np.exp(log_scale) * np.sin(angle))[:, None]
    rel = points - centre
    x = cos * rel[..., 0] - sin * rel[..., 1]
    y = sin * rel[..., 0] + cos * rel[..., 1]
    return np.stack([x, y], -1) + centre + shift[:, None]


def apply_motion_controls(
    poses: np.ndarray, reference: np.ndarray, controls: MotionControls
) -> np.ndarray:
    """(T, 134, 3) ``poses`` with their motion scaled by ``controls`` (a new array; scores
    unchanged). ``reference`` (134, 3) is the photo's pose, in the same pixel frame."""
    poses = np.asarray(poses, np.float32)
    if controls.neutral or len(poses) == 0:
        return poses.copy()
    ref = np.asarray(reference, np.float32)[:, :2].astype(np.float64)
    out = poses.astype(np.float64)
    visible = np.asarray(reference)[:, 2] > layout.VISIBILITY_THRESHOLD

    # Head: fit the rigid motion, take it off, scale the articulation, put a scaled motion back.
    anchors = HEAD_ANCHORS[visible[HEAD_ANCHORS]]
    if len(anchors) >= 3:
        centre = ref[anchors].mean(0)
        angle, log_scale, shift = _similarity(ref[anchors], out[:, anchors, :2])
        # The head's points in the photo's frame: (T, H, 2).
        canonical = _transform(out[:, HEAD, :2] - shift[:, None], centre, -angle, -log_scale,
                               np.zeros_like(shift))  # fmt: skip
        for index, scale in ((MOUTH, controls.mouth), (LIDS, controls.blinks)):
            if scale != 1.0:
                at = _IN_HEAD[index]
                canonical[:, at] = ref[index] + scale * (canonical[:, at] - ref[index])
        if controls.mouth > 1.0:  # an exaggerated closing must not push the lips through
            for up, low in INNER_LIP_PAIRS:
                u, w = _IN_HEAD[up], _IN_HEAD[low]
                canonical[:, w, 1] = np.maximum(canonical[:, w, 1], canonical[:, u, 1])
        k = controls.head
        moved = _transform(canonical, centre, k * angle, k * log_scale, k * shift)
        keep = visible[HEAD]  # unseen points keep the driver's positions
        out[:, HEAD[keep], :2] = moved[:, keep]

    # Body, arms and hands: scale each point's displacement from the photo.
    body = NOT_HEAD[visible[NOT_HEAD]]
    out[:, body, :2] = ref[body] + controls.gestures * (out[:, body, :2] - ref[body])
    return out.astype(np.float32)


def add_motion_arguments(parser: argparse.ArgumentParser) -> None:
    """The four ``--head-motion/--gestures/--mouth/--blinks`` dials of a command line."""
    group = parser.add_argument_group("motion controls (1 = as driven, 0 = as in the photo)")
    for name, flag in FLAGS.items():
        group.add_argument(
            flag, dest=f"motion_{name}", type=float, default=1.0, metavar="X",
            help=f"scale of the {name} motion, 0…{LIMITS[name]:g} (default 1)",
        )  # fmt: skip


def controls_from_args(args: argparse.Namespace) -> MotionControls:
    """:class:`MotionControls` from :func:`add_motion_arguments`' flags (``ValueError``
    naming the flag if one is out of range)."""
    for name, flag in FLAGS.items():
        value = getattr(args, f"motion_{name}")
        if not (math.isfinite(value) and 0.0 <= value <= LIMITS[name]):
            raise ValueError(f"{flag} must be in 0…{LIMITS[name]:g}, got {value:g}")
    return MotionControls(**{name: getattr(args, f"motion_{name}") for name in FLAGS})
