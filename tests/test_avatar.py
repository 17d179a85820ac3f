"""Photo loading and framing: bad files get clear errors; framing follows the documented rules."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmgt import avatar as avatar_mod
from mmgt.avatar import MIN_SIDE, frame_square, load_image
from mmgt.errors import ImageError, NoFaceError
from mmgt.keypoints import layout
from mmgt.keypoints.extractor import Extraction


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a size; decoding it would be a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _encode(img: np.ndarray | Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format=fmt)
    return buf.getvalue()


def test_loads_rgb_from_path_and_bytes(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    path = tmp_path / "p.png"
    path.write_bytes(_encode(img))
    np.testing.assert_array_equal(load_image(path), img)
    np.testing.assert_array_equal(load_image(_encode(img)), img)


def test_transparency_is_composited_on_white():
    rgba = np.zeros((160, 160, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent except a centre square
    rgba[40:120, 40:120, 3] = 255
    out = load_image(_encode(rgba))
    assert out.shape == (160, 160, 3)
    assert (out[0, 0] == 255).all()  # transparent → white
    assert tuple(out[80, 80]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("mode", "fmt", "scale", "offset"),
    [
        ("I;16", "PNG", 257, 0),
        ("I", "TIFF", 257, 0),
        ("F", "TIFF", 1 / 255, 0),
        ("F", "TIFF", 4, -300),
    ],
)
def test_high_bit_depth_greyscale_is_scaled_not_clipped(mode, fmt, scale, offset):
    grey = np.random.default_rng(1).integers(0, 256, (150, 170)).astype(np.float64)
    pixels = grey * scale + offset  # 16-bit, 32-bit integer, 0–1 float, arbitrary float range
    im = Image.fromarray(pixels.astype({"F": np.float32, "I": np.int32}.get(mode, np.uint16)))
    if im.mode != mode:
        im = im.convert(mode)
    out = load_image(_encode(im, fmt))
    assert out.shape == (150, 170, 3)
    assert (out[..., 0] == out[..., 2]).all()
    if offset:  # stretched from its minimum to its maximum
        expected = (grey - grey.min()) / (grey.max() - grey.min()) * 255
    else:
        expected = grey
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 1.0


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (200, 150), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    assert load_image(buf.getvalue()).shape == (200, 150, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an image at all", "not an image format"),
        (b"", "not an image format"),
        (_png_header_only(100_000, 100_000), "too large"),
        (_png_header_only(20_000, 100), "too large"),
        (_encode(np.zeros((64, 300, 3), np.uint8)), "too small"),
    ],
)
def test_bad_images_are_refused(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_missing_and_oversized_files(tmp_path, monkeypatch):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "nope.png")
    big = tmp_path / "big.png"
    big.write_bytes(_encode(np.zeros((200, 200, 3), np.uint8)))
    monkeypatch.setattr(avatar_mod, "MAX_FILE_BYTES", 100)
    with pytest.raises(ImageError, match="larger than"):
        load_image(big)


def test_truncated_image_is_refused():
    data = _encode(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 3])


def test_minimum_side_constant_is_enforced_exactly():
    ok = np.zeros((MIN_SIDE, MIN_SIDE, 3), np.uint8)
    assert load_image(_encode(ok)).shape == (MIN_SIDE, MIN_SIDE, 3)


class TestFraming:
    def test_landscape_is_centred_on_the_face(self):
        img = np.zeros((400, 1000, 3), np.uint8)
        out = frame_square(img, (700.0, 100.0, 800.0, 220.0))  # face box, face height 120
        assert out.shape == (400, 400, 3)
        # Centred on x = 750 → columns 550..950.
        assert out.base is img or np.shares_memory(out, img)
        img[:, 550] = 7
        assert (frame_square(img, (700.0, 100.0, 800.0, 220.0))[:, 0] == 7).all()

    def test_crop_is_clamped_to_the_photo(self):
        img = np.arange(300 * 600, dtype=np.uint32).reshape(300, 600)
        img = np.stack([img] * 3, -1)
        out = frame_square(img, (0.0, 10.0, 40.0, 90.0))  # face at the left edge
        assert out.shape[:2] == (300, 300)
        assert out[0, 0, 0] == img[0, 0, 0]

    def test_small_face_gets_an_upper_body_crop(self):
        img = np.zeros((2000, 1500, 3), np.uint8)
        out = frame_square(img, (700.0, 300.0, 800.0, 420.0))  # face height 120 in a 1500 photo
        assert out.shape[:2] == (480, 480)  # 4 face heights

    def test_square_photo_with_large_face_is_kept_whole(self):
        img = np.zeros((512, 512, 3), np.uint8)
        assert frame_square(img, (180.0, 60.0, 270.0, 180.0)) is img


class _FindsOnlyTheWholePhoto:
    """An extractor that finds the face in the whole photo but not in the framed square, as
    MediaPipe can near its limits (a face turned away, seen at another scale)."""

    dwpose = None

    def __init__(self, keypoints: np.ndarray, mesh: np.ndarray) -> None:
        self.calls = 0
        self.keypoints, self.mesh = keypoints, mesh

    def __call__(self, image: np.ndarray, *, use_dwpose: bool = True) -> Extraction:
        self.calls += 1
        if self.calls > 1:
            raise NoFaceError("a person was found but no face is visible")
        return Extraction(self.keypoints.copy(), self.mesh.copy(), 0.8)


def test_face_found_only_in_the_whole_photo_is_moved_into_the_square():
    rng = np.random.default_rng(0)
    kp = np.zeros((layout.NUM_KEYPOINTS, 3), np.float32)  # in the 1024 × 640 detection copy
    kp[layout.FACE, 0] = rng.uniform(560, 620, 68)
    kp[layout.FACE, 1] = rng.uniform(120, 200, 68)
    kp[layout.FACE, 2] = 0.8
    kp[layout.R_WRIST] = (50.0, 300.0, 0.9)  # far left of the face: outside the square
    kp[layout.L_WRIST] = (700.0, 300.0, 0.9)
    mesh = np.stack([kp[layout.FACE[0], 0].repeat(478), kp[layout.FACE[0], 1].repeat(478)], 1)
    mesh = np.concatenate([mesh, rng.normal(0, 10, (478, 1))], 1).astype(np.float32)
    ex = _FindsOnlyTheWholePhoto(kp, mesh)
    photo = rng.integers(0, 256, (1000, 1600, 3), dtype=np.uint8)
    avatar = avatar_mod.prepare_avatar(photo, frame_size=256, extractor=ex)
    assert ex.calls == 2 and avatar.image.shape == (256, 256, 3)
    in_photo = kp.copy()
    in_photo[:, :2] *= 1600 / 1024
    left, top, side = avatar_mod.square_box(photo.shape, avatar_mod._face_box(in_photo))
    assert side < 1000 and left > 0  # a real crop, so the move is not the identity
    k = 256 / side
    expected = (in_photo[layout.FACE, :2] - (left, top)) * k
    pose = avatar.reference_pose
    np.testing.assert_allclose(pose[layout.FACE, :2], expected, rtol=1e-5)
    assert (pose[layout.FACE, 2] == np.float32(0.8)).all()
    assert pose[layout.R_WRIST, 2] == 0  # outside the square now
    assert pose[layout.L_WRIST, 2] == np.float32(0.9)
    assert (pose[layout.LEFT_HAND] == 0).all()  # not found stays not found
    np.testing.assert_allclose(avatar.face_mesh[:, 2], mesh[:, 2] * 1600 / 1024 * k, rtol=1e-5)
