"""Motion masks: official fixtures (README G.2, G.3, I.1), stream vs clip, behaviour."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mmgt import mask_filters as mf
from mmgt import masks as mm
from mmgt.keypoints import layout
from mmgt.types import MASK_NAMES, KeypointSeq, MaskSet

FIXTURES = Path(__file__).parent / "fixtures/official"
OVERLAPS_254 = [616, 726, 315, 150, 100, 161]
KERNELS = {"face": 31, "lips": 21}


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / name) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pose() -> dict[str, np.ndarray]:
    return _load("pose_render.npz")


@pytest.fixture(scope="module")
def pyr() -> dict[str, np.ndarray]:
    return _load("mask_pyramid.npz")


@pytest.fixture(scope="module")
def pixels(pose: dict[str, np.ndarray]) -> np.ndarray:
    return layout.denormalize(pose["normalized"])  # (6, 134, 3) float32


@pytest.fixture(scope="module")
def stream_sets(pixels: np.ndarray) -> list[MaskSet]:
    stream = mm.MotionMaskStream(keep_raw=True)
    return [stream.push(p, i) for i, p in enumerate(pixels)]


def _official_image(pose: dict[str, np.ndarray], name: str, frame: int) -> np.ndarray:
    img = pose[f"{name}_mask_u8"][frame]  # (512, 512, 3), R = G = B
    assert (img == img[..., :1]).all()
    return img[..., 0]


def _assert_pyramid(levels: tuple[np.ndarray, ...], pyr: dict, name: str, frame: int) -> None:
    assert [lv.shape for lv in levels] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    for lvl, got in enumerate(levels):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.ravel(), pyr[f"{name}_l{lvl}"][frame])


# --- fixtures: raw masks --------------------------------------------------------------------


@pytest.mark.parametrize("frame", range(6))
def test_raw_masks_match_official(
    stream_sets: list[MaskSet], pose: dict[str, np.ndarray], frame: int
) -> None:
    raw = stream_sets[frame].raw
    np.testing.assert_array_equal(raw["face_hands"], _official_image(pose, "face", frame))
    np.testing.assert_array_equal(raw["lips"], _official_image(pose, "lips", frame))
    np.testing.assert_array_equal(raw["hands"], _official_image(pose, "hands", frame))
    assert (raw["face_hands"] == 254).sum() == OVERLAPS_254[frame]
    np.testing.assert_array_equal(raw["face_hands"], raw["face"] + raw["hands"])  # uint8 wrap
    rows, cols = raw["face"].any(axis=1), raw["face"].any(axis=0)
    np.testing.assert_array_equal(raw["face"] > 0, rows[:, None] & cols[None, :])  # one box
    np.testing.assert_array_equal(raw["background"], 255 - raw["face_hands"])


def test_lips_box_bounds(stream_sets: list[MaskSet]) -> None:
    """README G.2: frame 0 lips x ∈ [241, 270), y ∈ [147, 162); frame 5 ends at y = 157."""
    ys, xs = np.nonzero(stream_sets[0].raw["lips"])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (241, 270, 147, 162)
    assert np.nonzero(stream_sets[5].raw["lips"])[0].max() + 1 == 157


# --- fixtures: post-processing --------------------------------------------------------------


@pytest.mark.parametrize("name", ["face", "lips"])
def test_intermediates_from_official_images(
    pose: dict[str, np.ndarray], pyr: dict[str, np.ndarray], name: str
) -> None:
    imgs = np.stack([_official_image(pose, name, f) for f in range(6)])  # (6, 512, 512)
    resized, blurred, stretched = mf.blur_masks(mf.sample_taps(imgs), [KERNELS[name]] * 6)
    for got, key in ((resized, "resized64"), (blurred, "blurred64"), (stretched, "minmax64")):
        ref = pyr[f"{name}_{key}_u8"]  # (6, 64, 64, 3), R = G = B
        assert (ref == ref[..., :1]).all()
        np.testing.assert_array_equal(got, ref[..., 0], err_msg=key)
    np.testing.assert_array_equal(stretched, pyr[f"{name}_gray64_u8"])


@pytest.mark.parametrize("frame", range(6))
def test_levels_from_official_images_and_own_masks(
    stream_sets: list[MaskSet],
    pose: dict[str, np.ndarray],
    pyr: dict[str, np.ndarray],
    frame: int,
) -> None:
    for name, own in (("face", "face_hands"), ("lips", "lips")):
        stored = mf.mask_pyramid(_official_image(pose, name, frame), KERNELS[name])
        _assert_pyramid(stored, pyr, name, frame)
        _assert_pyramid(stream_sets[frame].pyramid[own], pyr, name, frame)
    full = tuple(np.float32(1) + lv for lv in stream_sets[frame].pyramid["lips"])
    _assert_pyramid(full, pyr, "full", frame)  # official full = 1 + lips


def test_fast_path_equals_raw_path(pixels: np.ndarray, stream_sets: list[MaskSet]) -> None:
    fast = mm.MotionMaskStream()
    for i, p in enumerate(pixels):
        got = fast.push(p, i)
        assert got.raw == {} and set(got.pyramid) == set(MASK_NAMES)
        for n in MASK_NAMES:
            for a, b in zip(got.pyramid[n], stream_sets[i].pyramid[n], strict=True):
                np.testing.assert_array_equal(a, b)


# --- exact filters vs the libraries they reproduce ------------------------------------------


def _test_images(rng: np.random.Generator, side: int, count: int) -> np.ndarray:
    imgs = []
    for i in range(count):
        if i % 3 == 0:
            imgs.append(rng.integers(0, 256, (side, side), dtype=np.uint8))
        else:
            img = np.zeros((side, side), np.uint8)
            for _ in range(3):
                y0, y1 = sorted(rng.integers(0, side + 1, 2))
                x0, x1 = sorted(rng.integers(0, side + 1, 2))
                img[y0:y1, x0:x1] += np.uint8(rng.choice([1, 128, 254, 255]))
            imgs.append(img)
    return np.stack(imgs)


@pytest.mark.parametrize("size", [256, 384, 512, 1024])
def test_filters_match_cv2_and_pil(size: int) -> None:
    rng = np.random.default_rng(size)
    imgs = _test_images(rng, size, 6)
    side = size // 8
    resized, _, _ = mf.blur_masks(mf.sample_taps(imgs), [3] * len(imgs))
    for img, got in zip(imgs, resized, strict=True):
        ref = cv2.resize(img, (side, side), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(got, ref)
    small = _test_images(rng, side, 6)
    kernels = {mm.blur_kernel(n, size) for n in mm.BLUR_KERNELS_512} | {3, 5, 7, 9}
    for k in sorted(kernels):
        got = mf.gaussian_blur_u8(small, k)
        for img, g in zip(small, got, strict=True):
            np.testing.assert_array_equal(g, cv2.GaussianBlur(img, (k, k), 0), err_msg=f"k={k}")
    levels = mf.pyramid_levels(small)
    for lvl in range(1, mf.NUM_LEVELS):
        for img, g in zip(small, levels[lvl], strict=True):
            s = side >> lvl
            ref = np.asarray(Image.fromarray(img).resize((s, s), Image.BILINEAR), np.float32)
            np.testing.assert_array_equal(g, ref / np.float32(255))


def test_blur_kernel_sizes() -> None:
    assert [mm.blur_kernel(n) for n in ("face", "face_hands", "body", "lips", "hands")] == [
        31,
        31,
        31,
        21,
        21,
    ]
    assert (mm.blur_kernel("face", 256), mm.blur_kernel("lips", 256)) == (15, 11)
    assert (mm.blur_kernel("face", 384), mm.blur_kernel("lips", 384)) == (23, 15)
    assert mm.blur_kernel("lips", 64) == 3


# --- stream vs clip -------------------------------------------------------------------------


def _random_sequence(pixels: np.ndarray, size: int, frames: int, seed: int) -> KeypointSeq:
    """Realistic poses with noise plus the awkward cases, in a ``size`` frame."""
    rng = np.random.default_rng(seed)
    base = pixels[rng.integers(0, len(pixels), frames)] * np.float32(size / 512)
    pts = base.copy()
    pts[..., :2] += rng.normal(0, size / 40, (frames, 134, 2)).astype(np.float32)
    pts[..., 2] = rng.choice(
        [0.0, 0.2, 0.3, 0.31, 0.9, 1.0], (frames, 134), p=[0.05, 0.05, 0.05, 0.05, 0.4, 0.4]
    )
    pts[1] = 0  # all hidden
    pts[2, layout.RIGHT_HAND, 2] = 0  # missing hand
    pts[3, layout.LEFT_HAND, :2] = (-50, size + 30)  # hand outside the frame
    pts[4, layout.FACE[:10], :2] = 0.5  # int() → 0: excluded
    pts[4, layout.FACE[10:20], 0] = size - 1  # right border
    pts[5, layout.ARMS, :2] = (size + 100, -100)  # arms outside
    pts[6, layout.L_SHOULDER, 2] = 0  # a hidden shoulder: minimum limb margin
    pts[7, layout.FACE[5:9]] = np.nan
    pts[8, layout.R_WRIST, :2] = (np.inf, 5)
    pts[9, layout.LIPS, :2] = pts[9, layout.LIPS[0], :2]  # degenerate box: no lips
    return KeypointSeq(pts, frame_size=size, start_frame=100)


@pytest.mark.parametrize(("size", "seed"), [(256, 0), (384, 1), (512, 2)])
def test_stream_equals_clip(pixels: np.ndarray, size: int, seed: int) -> None:
    seq = _random_sequence(pixels, size, 12, seed)
    clip = mm.motion_masks_clip(seq, keep_raw=True, chunk=5)
    clip_fast = mm.motion_masks_clip(seq)
    stream = mm.MotionMaskStream(size, keep_raw=True)
    stream_fast = mm.MotionMaskStream(size)
    assert [m.frame_index for m in clip] == list(range(100, 112))
    for t, (c, f) in enumerate(zip(clip, clip_fast, strict=True)):
        s = stream.push(seq.points[t], 100 + t)
        sf = stream_fast.push(seq.points[t], 100 + t)
        assert s.frame_index == c.frame_index == f.frame_index
        assert list(s.raw) == list(c.raw) == list(MASK_NAMES) and f.raw == {}
        for n in MASK_NAMES:
            np.testing.assert_array_equal(s.raw[n], c.raw[n], err_msg=f"{t} {n}")
            levels = zip(s.pyramid[n], c.pyramid[n], f.pyramid[n], sf.pyramid[n], strict=True)
            for a, *others in levels:
                for b in others:
                    np.testing.assert_array_equal(a, b, err_msg=f"{t} {n}")
                assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


# --- behaviour ------------------------------------------------------------------------------


def test_raising_an_arm_moves_the_body_mask(pixels: np.ndarray) -> None:
    stream = mm.MotionMaskStream(names=("body",), keep_raw=True)
    down = pixels[0].copy()
    up = down.copy()
    up[layout.R_ELBOW, 1] = down[layout.R_SHOULDER, 1] - 60
    up[layout.R_WRIST, 1] = down[layout.R_SHOULDER, 1] - 150
    a, b = stream.push(down, 0).raw["body"], stream.push(up, 1).raw["body"]
    assert np.nonzero(b.any(axis=1))[0].min() < np.nonzero(a.any(axis=1))[0].min() - 100
    assert set(np.unique(a)) == {0, 255}
    sh = down[[layout.R_SHOULDER, layout.L_SHOULDER], :2].astype(int)
    assert (a[sh[:, 1], sh[:, 0]] == 255).all()
    boxes = mm.mask_boxes(down)["body"]
    assert len(boxes) == len(layout.LIMB_SEGMENTS) + 1  # arm segments + torso
    width = float(np.hypot(*(down[layout.R_SHOULDER, :2] - down[layout.L_SHOULDER, :2])))
    margin = max(mm.LIMB_MARGIN_MIN, int(mm.LIMB_MARGIN_FACTOR * width))
    x0, y0, x1, y1 = boxes[0]  # shoulder line
    assert y0 == int(min(down[[2, 5], 1])) - margin and y1 == int(max(down[[2, 5], 1])) + margin + 1
    assert (a > 0).any() and not np.array_equal(a, b)
    # Torso: between the shoulders, down to the lowest visible hip.
    tx0, ty0, tx1, ty1 = boxes[-1]
    hips = [
        down[h, 1] for h in (layout.R_HIP, layout.L_HIP) if down[h, 2] > layout.VISIBILITY_THRESHOLD
    ]
    assert ty1 == (int(max(hips)) + 1 if hips else 512)
    assert tx0 == max(int(min(down[[2, 5], 0])) - margin, 0)
    no_hips = down.copy()
    no_hips[[layout.R_HIP, layout.L_HIP], 2] = 0.0
    assert mm.mask_boxes(no_hips)["body"][-1][3] == 512  # torso runs to the frame bottom


def test_background_is_the_complement(stream_sets: list[MaskSet]) -> None:
    for ms in stream_sets:
        np.testing.assert_array_equal(ms.raw["background"], 255 - ms.raw["face_hands"])
        for bg, fh in zip(ms.pyramid["background"], ms.pyramid["face_hands"], strict=True):
            np.testing.assert_array_equal(bg, np.float32(1) - fh)


@pytest.mark.parametrize("size", [256, 384])
def test_other_frame_sizes(pixels: np.ndarray, size: int) -> None:
    pts = pixels[0] * np.where(np.arange(3) < 2, np.float32(size / 512), np.float32(1))
    ms = mm.MotionMaskStream(size, keep_raw=True).push(pts, 0)
    side = size // 8
    for n in MASK_NAMES:
        assert ms.raw[n].shape == (size, size)
        assert [lv.shape for lv in ms.pyramid[n]] == [(side >> i,) * 2 for i in range(4)]
        assert all(
            lv.dtype == np.float32 and 0 <= lv.min() <= lv.max() <= 1 for lv in ms.pyramid[n]
        )
    for n in ("face", "face_hands", "lips", "hands", "body"):
        assert ms.pyramid[n][0].max() == 1.0  # min-max stretched
        assert ms.pyramid[n][0].min() == 0.0


def test_empty_masks_stay_zero() -> None:
    hidden = np.zeros((134, 3), np.float32)
    hidden[:, :2] = 100.0  # visible coordinates, zero scores
    ms = mm.MotionMaskStream(keep_raw=True).push(hidden, 7)
    assert ms.frame_index == 7
    for n in ("face", "face_hands", "lips", "hands", "body"):
        assert not ms.raw[n].any()
        assert all(not lv.any() for lv in ms.pyramid[n])
    assert (ms.raw["background"] == 255).all()
    assert all((lv == 1).all() for lv in ms.pyramid["background"])


def test_name_subsets_and_validation(pixels: np.ndarray, stream_sets: list[MaskSet]) -> None:
    only_bg = mm.MotionMaskStream(names=("background",)).push(pixels[2], 2)
    assert list(only_bg.pyramid) == ["background"]
    ref = stream_sets[2].pyramid["background"]
    for a, b in zip(only_bg.pyramid["background"], ref, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError):
        mm.MotionMaskStream(names=("nose",))
    with pytest.raises(ValueError):
        mm.MotionMaskStream(500)
    with pytest.raises(ValueError):
        mm.mask_boxes(np.zeros((10, 3)))


def test_mask_overlay(pixels: np.ndarray, stream_sets: list[MaskSet]) -> None:
    image = np.full((512, 512, 3), 40, np.uint8)
    ms = stream_sets[0]
    out = mm.mask_overlay(image, ms)
    assert out.shape == image.shape and out.dtype == np.uint8
    untouched = ~np.any([ms.raw[n] > 0 for n in ("face_hands", "lips", "hands", "body")], axis=0)
    np.testing.assert_array_equal(out[untouched], image[untouched])
    ys, xs = np.nonzero(ms.raw["lips"])
    lips, face = out[ys[0], xs[0]], out[ys[0], xs[0] - 20]
    assert not np.array_equal(lips, face) and not np.array_equal(lips, image[0, 0])
    with pytest.raises(ValueError, match="keep_raw"):
        mm.mask_overlay(image, mm.MotionMaskStream().push(pixels[0], 0))
