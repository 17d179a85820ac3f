"""The warp renderer's mouth: the photo's own teeth move with the jaws, a dark cavity opens
between them, the lower lip drops intact and rounds, and every edge is anti-aliased."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mmgt.avatar import load_avatar
from mmgt.keypoints import layout
from mmgt.renderers import mouth
from mmgt.renderers.raster import catmull_rom, fill_coverage, line_coverage
from mmgt.renderers.warp import WarpRenderer, _maps, backward_map, render_frame
from mmgt.types import Avatar

F = layout.face_index
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@pytest.fixture(scope="module")
def avatar() -> Avatar:
    return load_avatar()  # the bundled astronaut smiles with her upper teeth showing


@pytest.fixture(scope="module")
def state(avatar):
    return WarpRenderer().prepare(avatar)


def _drop_jaw(pose: np.ndarray, d: float) -> np.ndarray:
    """The reference pose with the lower lip and chin lowered by up to ``d`` pixels."""
    out = pose.copy()
    out[F(np.array([65, 66, 67])), 1] += d
    out[F(np.array([55, 56, 57, 58, 59])), 1] += d
    out[F(np.arange(4, 13)), 1] += d * np.array([0.2, 0.5, 0.8, 1, 1, 1, 0.8, 0.5, 0.2])
    return out


def _rows(image: np.ndarray, y0: float, y1: float, xs: np.ndarray) -> np.ndarray:
    """(rows, len(xs), 3) float pixels of the whole rows strictly inside (y0, y1)."""
    ys = np.arange(int(np.floor(y0)) + 1, int(np.ceil(y1)))
    return image[ys][:, xs].astype(np.float32)


def test_opening_mouth_keeps_the_photos_teeth_and_lower_lip(avatar, state):
    ref = avatar.reference_pose
    assert state.mouth.shows_teeth
    target = _drop_jaw(ref, 12.0)
    frame = render_frame(state, target)
    pose, _ = mouth.shape_mouth(target, state.mouth)
    xs = np.arange(-5, 6) + int(round(ref[F(62), 0]))  # columns around the mouth's centre
    top = float(ref[F(62), 1])  # the upper lip does not move
    teeth_h = state.mouth.upper_share * state.mouth.gap
    # The upper teeth stay as they are in the photo (a plain warp would stretch them).
    teeth_out = _rows(frame, top, top + teeth_h - 1, xs)
    teeth_ref = _rows(avatar.image, top, top + teeth_h - 1, xs)
    assert len(teeth_out) >= 3
    assert np.abs(teeth_out - teeth_ref).mean() < 6.0
    # Between the teeth and the lowered lip: a dark cavity.
    bottom = float(pose[F(66), 1])
    cavity = _rows(frame, top + teeth_h + 1, bottom - 3, xs) @ LUMA
    assert len(cavity) >= 6
    assert cavity.max() < 100 and cavity.mean() < 0.35 * (teeth_ref @ LUMA).mean()
    # The lower lip dropped with the jaw, intact: the same colours as in the photo.
    lip_out = _rows(frame, bottom, float(pose[F(57), 1]) - 1, xs).reshape(-1, 3).mean(0)
    lip_ref = _rows(avatar.image, ref[F(66), 1], ref[F(57), 1] - 1, xs).reshape(-1, 3).mean(0)
    assert np.abs(lip_out - lip_ref).max() < 15.0


def test_nothing_is_painted_for_lips_that_are_not_visible(avatar, state):
    target = _drop_jaw(avatar.reference_pose, 12.0)
    assert mouth.opening(target, state.mouth) == 1.0
    target[layout.LIPS, 2] = 0.0
    assert mouth.opening(target, state.mouth) == 0.0
    assert mouth.shape_mouth(target, state.mouth)[0] is target
    frame = avatar.image.copy()
    mouth.paint_mouth(frame, target, mouth.lip_row(target, mouth.LOWER), state.mouth)
    np.testing.assert_array_equal(frame, avatar.image)


def test_a_closed_mouth_photo_gets_a_painted_interior(avatar):
    """When the photo shows no teeth, a cavity with a band of teeth is painted instead."""
    closed = avatar.reference_pose.copy()
    closed[F(np.array([65, 66, 67])), 1] = closed[F(np.array([63, 62, 61])), 1]  # lips meet
    state = WarpRenderer().prepare(Avatar("closed", avatar.image, closed))
    assert not state.mouth.shows_teeth
    target = _drop_jaw(closed, 14.0)
    frame = render_frame(state, target)
    pose, _ = mouth.shape_mouth(target, state.mouth)
    x = int(round(closed[F(62), 0]))
    top, bottom = float(closed[F(62), 1]), float(pose[F(66), 1])
    column = frame[int(top) + 1 : int(bottom), x].astype(np.float32) @ LUMA  # top to bottom
    assert column[:3].max() > 150  # teeth under the upper lip
    assert column[len(column) // 2 :].max() < 90  # the cavity below them


def test_the_lower_lip_rounds_and_keeps_its_thickness(avatar, state):
    ref = avatar.reference_pose
    assert mouth.shape_mouth(ref, state.mouth)[0] is ref  # not open: untouched
    target = _drop_jaw(ref, 12.0)
    pose, lower = mouth.shape_mouth(target, state.mouth)
    assert lower.shape == (7, 2)
    np.testing.assert_allclose(lower[[0, 2, 3, 4, 6]], pose[mouth.LOWER, :2], atol=1e-4)
    moved = lower[:, 1] - mouth.lip_row(target, mouth.LOWER)[:, 1]
    assert (moved >= -1e-4).all() and moved.max() > 0.5  # pushed down, never up

    def thickness(p: np.ndarray, inner: np.ndarray) -> np.ndarray:
        """Outer minus inner (7-point row) lower lip height at the outer lip's x positions."""
        outer = p[mouth.OUTER_LOWER, :2]
        return outer[1:-1, 1] - np.interp(outer[1:-1, 0], inner[:, 0], inner[:, 1])

    before = thickness(target, mouth.lip_row(target, mouth.LOWER))
    np.testing.assert_allclose(thickness(pose, lower), before, atol=0.6)


def test_open_mouth_lower_edge_is_rounded_not_a_v():
    """Three lower-lip landmarks make a V; the painted opening follows an elliptical arc
    through the corners and its deepest point, only ever pushed outwards."""
    right, left = np.array([40.0, 10.0]), np.array([0.0, 10.0])
    u = np.linspace(0.0, 1.0, 17)  # from the right corner to the left one
    v_shape = np.stack([40 - 40 * u, 10 + 12 * (1 - np.abs(2 * u - 1))], 1)  # (17, 2)
    rounded = mouth.round_out(v_shape, left, right, pull=1.0)
    np.testing.assert_allclose(rounded[[0, 8, 16]], v_shape[[0, 8, 16]], atol=1e-6)
    assert (rounded[:, 1] >= v_shape[:, 1] - 1e-9).all()
    ellipse = 10 + 12 * np.sqrt(1 - (2 * u - 1) ** 2)
    np.testing.assert_allclose(rounded[:, 1], ellipse, atol=1e-6)
    # Rotated with the head, the same holds along the mouth's own axis.
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s], [s, c]])
    turned = mouth.round_out(v_shape @ rot.T, left @ rot.T, right @ rot.T, pull=1.0)
    np.testing.assert_allclose(turned, rounded @ rot.T, atol=1e-6)


def test_painted_edges_are_anti_aliased():
    """Coverage masks are fractional on edges and fill the polygon's true area."""
    triangle = np.array([[2.3, 3.1], [17.6, 5.2], [9.8, 18.4]])
    cover = fill_coverage((24, 24), triangle)
    partial = (cover > 0.02) & (cover < 0.98)
    assert partial.sum() >= 15
    (ax, ay), (bx, by), (cx, cy) = triangle
    area = 0.5 * abs((bx - ax) * (cy - ay) - (cx - ax) * (by - ay))
    assert cover.sum() == pytest.approx(area, rel=0.08)
    line = line_coverage((24, 24), np.array([[2.0, 2.0], [20.0, 9.0]]), 1)
    assert ((line > 0.02) & (line < 0.98)).sum() >= 10


def test_catmull_rom_passes_through_its_points_and_is_smooth():
    points = np.array([[0.0, 0.0], [10.0, 4.0], [20.0, 5.0], [30.0, 3.0], [40.0, 0.0]])
    curve = catmull_rom(points, steps=4)
    assert curve.shape == (17, 2)
    np.testing.assert_allclose(curve[::4], points, atol=1e-9)
    # A segment's midpoint follows the cubic Hermite form with Catmull-Rom tangents.
    p0, p1, p2, p3 = points[0], points[1], points[2], points[3]
    mid = 0.5 * (p1 + p2) + 0.125 * ((p2 - p0) - (p3 - p1)) / 2.0
    np.testing.assert_allclose(curve[6], mid, atol=1e-9)


def test_the_teeth_split_where_the_photo_shows_a_gap_between_the_rows(avatar, state):
    assert state.mouth.upper_share == mouth.UPPER_TEETH_SHARE  # her lower teeth are hidden
    upper = np.stack([np.linspace(10, 50, 7), np.full(7, 20.0)], 1).astype(np.float32)
    lower = upper + np.array([0.0, 20.0], np.float32)
    image = np.full((64, 64, 3), 235, np.uint8)  # two rows of white teeth …
    image[29:32] = 40  # … with a dark gap 45–55 % of the way down
    assert mouth.teeth_split(image, upper, lower) == pytest.approx(0.5, abs=0.06)
    image[29:32] = 235  # no gap: the default share
    assert mouth.teeth_split(image, upper, lower) == mouth.UPPER_TEETH_SHARE


def test_a_turned_face_is_not_painted_past_its_edge():
    """The CC0 `camera` photo, a face in profile: the far mouth corner's landmarks lie past the
    silhouette, and the opening mouth's interior stops at the face's edge (read from the
    photo's pixels: on the mouth line, rows 205–209, the brightness jumps from about 120 to 230
    between x = 282 and 284) instead of being painted over the wall behind."""
    avatar = load_avatar(Path(__file__).parent / "data" / "camera.png")
    state = WarpRenderer().prepare(avatar)
    ref = avatar.reference_pose
    corner = state.mouth.far_end  # the front corner, turned away from the camera
    assert ref[F(64) if corner == -1 else F(60), 0] > 285  # the landmark is past the edge
    assert state.mouth.front is not None and 0.6 < state.mouth.front < 1.0
    target = _drop_jaw(ref, 8.0)
    past_edge = np.s_[207:217, 284:296]  # the wall right of the opening lips
    luma = render_frame(state, target)[past_edge] @ LUMA
    assert luma.min() > 150, luma.min()  # the wall (about 230), no dark cavity
    unclipped = replace(state, mouth=replace(state.mouth, front=None))
    assert (render_frame(unclipped, target)[past_edge] @ LUMA).min() < 100  # the premise
    # A greyscale photo gets grey paint.
    assert all(np.ptp(colour) == 0 for colour in vars(state.mouth.style).values())


def test_a_face_facing_the_camera_has_no_edge_to_stop_at_and_keeps_its_colours(state):
    assert state.mouth.front is None
    assert np.ptp(state.mouth.style.cavity) > 5 and np.ptp(state.mouth.style.teeth) > 5


def _folded_pixels(map_x: np.ndarray, map_y: np.ndarray, box: tuple[int, int, int, int]) -> int:
    """Pixels of ``box`` (x0, y0, x1, y1) where the backward map turns over (negative
    Jacobian determinant): a fold, which shows as a torn, doubled seam."""
    x0, y0, x1, y1 = box
    dxx, dxy = np.gradient(map_x, axis=1), np.gradient(map_x, axis=0)
    dyx, dyy = np.gradient(map_y, axis=1), np.gradient(map_y, axis=0)
    return int(((dxx * dyy - dxy * dyx)[y0:y1, x0:x1] < -0.05).sum())


def test_crossed_lips_are_uncrossed_before_warping():
    """A model closing an already closed mouth further (the default model does this on many
    closed-mouth photos) puts the inner lower lip above the upper one; warped as given, the
    mesh folds into a torn seam. The lower lip is lowered to meet the upper one instead."""
    avatar = load_avatar(Path(__file__).parent / "data" / "grace_hopper.jpg")
    state = WarpRenderer().prepare(avatar)
    ref = avatar.reference_pose
    assert abs(mouth.mouth_gap(ref)) < 1.0  # a closed mouth
    crossed = ref.copy()
    lower_lip = F(np.array([55, 56, 57, 58, 59, 65, 66, 67]))
    u = (ref[lower_lip, 0] - ref[F(48), 0]) / (ref[F(54), 0] - ref[F(48), 0])
    crossed[lower_lip, 1] -= 6.0 * np.sin(np.pi * np.clip(u, 0, 1)) ** 0.6  # as a jaw closes
    pose = mouth.uncross_lips(crossed)
    inner_up, inner_low = mouth.UPPER[1:4], mouth.LOWER[1:4]
    assert (pose[inner_low, 1] >= pose[inner_up, 1] - 1e-4).all()
    middle = pose[F(57), 1] - crossed[F(57), 1]  # the outer lower lip moves with the inner
    assert middle == pytest.approx(pose[F(66), 1] - crossed[F(66), 1], abs=0.5) and middle > 5
    assert (pose[mouth.UPPER, :] == crossed[mouth.UPPER, :]).all()  # the upper lip stays
    lips = ref[layout.LIPS, :2]
    box = (*np.floor(lips.min(0) - 4).astype(int), *np.ceil(lips.max(0) + 6).astype(int))
    assert _folded_pixels(*backward_map(state, crossed), box) == 0
    lower = mouth.lip_row(crossed, mouth.LOWER)
    assert _folded_pixels(*_maps(state, crossed, lower[[1, 5]]), box) > 0  # the premise
    assert mouth.uncross_lips(ref) is ref  # a pose that is not crossed is left alone
