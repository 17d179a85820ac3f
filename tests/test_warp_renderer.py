"""The warp renderer: the photo talks (mouth follows speech), the rest holds still, eyes blink,
and the warp never tears."""

from __future__ import annotations

import numpy as np
import pytest

from mmgt.audio import extract_light_features, load_audio
from mmgt.avatar import BUNDLED_AVATAR, load_avatar
from mmgt.drivers.procedural import ProceduralDriver
from mmgt.keypoints import layout
from mmgt.masks import mask_boxes
from mmgt.renderers import make_renderer
from mmgt.renderers.face_details import EYES, eye_openness
from mmgt.renderers.warp import WarpRenderer, backward_map, render_frame
from mmgt.types import Avatar, KeypointSeq

SPEECH = BUNDLED_AVATAR.parent / "speech_sample.wav"
F = layout.face_index


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def avatar() -> Avatar:
    return load_avatar()


@pytest.fixture(scope="module")
def clip(avatar):
    """The bundled avatar speaking the first 9 s of the bundled sample (speech and pauses)."""
    feats = extract_light_features(load_audio(SPEECH)[: 16000 * 9])
    poses = ProceduralDriver().generate(feats, avatar.reference_pose)
    state = WarpRenderer().prepare(avatar)
    frames = np.stack([render_frame(state, p) for p in poses.points])
    return feats, poses, frames


def test_reference_pose_renders_the_photo(avatar):
    state = WarpRenderer().prepare(avatar)
    out = render_frame(state, avatar.reference_pose)
    assert out.shape == avatar.image.shape and out.dtype == np.uint8
    assert psnr(out, avatar.image) > 45


def test_mouth_moves_with_the_speech_envelope(avatar, clip):
    feats, _, frames = clip
    lips = avatar.reference_pose[layout.OUTER_LIPS, :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    w = x1 - x0
    box = (slice(int(y0 - 0.5 * w), int(y1 + 0.8 * w)), slice(int(x0 - 0.3 * w), int(x1 + 0.3 * w)))
    change = np.abs(
        frames[:, box[0], box[1]].astype(np.float32) - avatar.image[box].astype(np.float32)
    ).mean((1, 2, 3))
    envelope = np.sqrt(np.exp(feats.values[:, 40]))  # RMS amplitude per frame
    r = np.corrcoef(change, envelope)[0, 1]
    assert r > 0.5, f"mouth change vs speech envelope: r = {r:.2f}"


def _moving_parts(points: np.ndarray) -> np.ndarray:
    """Union of the motion-mask boxes: the face box grown into a head box (forehead and hair
    above it, the chin contour below it), the hand boxes, and the body (torso and arms) boxes."""
    inside = np.zeros((512, 512), bool)
    boxes = mask_boxes(points)
    for x0, y0, x1, y1 in boxes["face"]:
        w, h = x1 - x0, y1 - y0
        inside[
            max(int(y0 - 0.6 * h), 0) : int(y1 + 0.1 * h),
            max(int(x0 - 0.15 * w), 0) : int(x1 + 0.15 * w),
        ] = True
    for x0, y0, x1, y1 in boxes["hands"] + boxes["body"]:
        inside[y0:y1, x0:x1] = True
    return inside


def test_background_stays_put_outside_the_masks(avatar, clip):
    _, poses, frames = clip
    ref_inside = _moving_parts(avatar.reference_pose)
    sq_err, count, per_frame = 0.0, 0, []
    diff = frames.astype(np.float64) - avatar.image.astype(np.float64)
    for i, p in enumerate(poses.points):
        outside = ~(ref_inside | _moving_parts(p))
        e = diff[i][outside] ** 2
        sq_err += e.sum()
        count += e.size
        per_frame.append(10 * np.log10(255.0**2 / max(e.mean(), 1e-12)))
    clip_psnr = 10 * np.log10(255.0**2 / (sq_err / count))
    assert clip_psnr >= 30.0, f"clip PSNR outside the masks {clip_psnr:.1f} dB"
    assert np.median(per_frame) >= 30.0
    assert min(per_frame) >= 26.0


def test_blinks_close_the_eyes(avatar, clip):
    _, poses, frames = clip
    ref = avatar.reference_pose
    closure = np.array(
        [min(eye_openness(p, e) / eye_openness(ref, e) for e in EYES) for p in poses.points]
    )
    blink, open_ = closure < 0.3, closure > 0.95
    assert blink.sum() >= 3 and open_.sum() > 50
    lum = frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    for eye in EYES:
        idx = F(np.array(eye))
        band, iris = np.zeros(len(frames)), np.zeros(len(frames))
        for i, p in enumerate(poses.points):
            # The reference eye box, moved with the head (the eye's corners) in this frame.
            shift = (p[idx[[0, 3]], :2] - ref[idx[[0, 3]], :2]).mean(0)
            pts = ref[idx, :2] + shift
            x0, x1 = int(pts[:, 0].min()) + 1, int(pts[:, 0].max())
            top, bottom = int(pts[[1, 2], 1].min()), int(pts[[4, 5], 1].max()) + 1
            # The lower half of the eye, where a closing lid's lashes come to rest.
            band[i] = lum[i, (top + bottom) // 2 : bottom, x0:x1].mean()
            # The upper half: the dark iris and pupil show while the eye is open.
            iris[i] = (lum[i, top : (top + bottom) // 2, x0:x1] < 70).mean()
        # The eye box darkens where the lid closes (lashes), and the iris disappears under it.
        assert band[blink].mean() < band[open_].mean() - 10, (
            band[blink].mean(),
            band[open_].mean(),
        )
        assert iris[open_].mean() > 0.1
        assert iris[blink].mean() < 0.3 * iris[open_].mean()


def test_the_warp_never_folds(avatar, clip):
    """No tearing: the backward map keeps its orientation everywhere outside mouth and eyes."""
    _, poses, _ = clip
    state = WarpRenderer().prepare(avatar)
    ref = avatar.reference_pose
    holes = np.zeros((512, 512), bool)
    for group in (layout.LIPS, layout.EYES):
        (x0, y0), (x1, y1) = ref[group, :2].min(0) - 12, ref[group, :2].max(0) + 16
        holes[int(y0) : int(y1), int(x0) : int(x1)] = True
    for p in poses.points[::15]:
        mx, my = backward_map(state, p)
        dxx, dxy = np.gradient(mx, axis=1), np.gradient(mx, axis=0)
        dyx, dyy = np.gradient(my, axis=1), np.gradient(my, axis=0)
        det = dxx * dyy - dxy * dyx
        assert det[~holes].min() > 0.3
        assert np.abs(np.stack([dxx - 1, dxy, dyx, dyy - 1]))[:, ~holes].max() < 1.5


def test_stream_api_and_other_sizes(avatar):
    small = Avatar("small", avatar.image[::2, ::2].copy(), avatar.reference_pose * [0.5, 0.5, 1])
    renderer = make_renderer("warp")
    assert renderer.name == "warp" and not renderer.needs_masks
    stream = renderer.open_stream(renderer.prepare(small))
    assert stream.window == 1 and stream.latency_frames == 0
    # Poses given in the 512 frame are rescaled to the avatar's 256 frame.
    poses = KeypointSeq(np.repeat(avatar.reference_pose[None], 3, 0), frame_size=512)
    frames = stream.push(poses)
    assert len(frames) == 3 and frames[0].shape == (256, 256, 3)
    assert psnr(frames[0], small.image) > 40
    assert stream.flush() == []
    stream.close()
    with pytest.raises(RuntimeError, match="closed"):
        stream.push(poses)
    with pytest.raises(ValueError, match="unknown renderer"):
        make_renderer("nope")


def test_hidden_face_points_come_from_the_face_mesh(avatar):
    """A detector unsure of some face points (DWPose on an occluded jaw): the warp takes those
    from the face mesh; without a mesh it refuses."""
    unsure = avatar.reference_pose.copy()
    unsure[layout.FACE[:10], :2] += 25.0  # wrong where the detector is unsure…
    unsure[layout.FACE[:10], 2] = 0.1  # … and says so
    state = WarpRenderer().prepare(Avatar("x", avatar.image, unsure, avatar.face_mesh))
    np.testing.assert_allclose(state.reference_pose[:, :2], avatar.reference_pose[:, :2], atol=1e-4)
    with pytest.raises(ValueError, match="68 face points"):
        WarpRenderer().prepare(Avatar("x", avatar.image, unsure))
