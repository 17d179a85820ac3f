"""Loading a reference photo and preparing it as an :class:`~mmgt.types.Avatar`.

Preparation (documented in the README, "Photos"):

1. **Load** with Pillow, honouring EXIF orientation; transparent pixels are composited on white.
   Files over :data:`MAX_FILE_BYTES`, images with more than :data:`MAX_PIXELS` pixels or a side
   over :data:`MAX_SIDE` are refused before decoding (decompression bombs included); images with
   a short side under :data:`MIN_SIDE` are refused as too small. Greyscale images of more than
   8 bits (16-bit PNG and TIFF, 32-bit integer or float TIFF) are scaled to 8 bits by their
   full range (see :func:`_to_8bit`), not clipped at 255.
2. **Frame** a square around the person: the face is found first, and the square is centred on
   it horizontally, with the top of the face :data:`FACE_TOP_FRACTION` of the way down. The
   square is the photo's short side, unless the face is small (the short side is more than
   :data:`FACE_HEIGHTS_PER_FRAME` / 0.75 face heights): then it is cropped to
   :data:`FACE_HEIGHTS_PER_FRAME` face heights, so a distant full-body photo becomes an
   upper-body frame instead of a tiny face. Square photos with a large enough face are kept whole.
3. **Resize** the square to the output size (area filter down, Lanczos up; small photos are
   upscaled), then extract the reference pose on the final image. MediaPipe is sensitive to
   scale near its limits; when it finds no face there, the landmarks it found in the whole
   photo are moved into the square instead.
"""

from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmgt.errors import ImageError, ImageTooLargeError, NoFaceError, NoPersonError
from mmgt.keypoints import layout
from mmgt.keypoints.extractor import (
    TURNED_AWAY_DEGREES,
    Extraction,
    ReferencePoseExtractor,
    face_turn,
)
from mmgt.types import Avatar, check_frame_size

MAX_FILE_BYTES = 50 * 1024 * 1024
MAX_PIXELS = 50_000_000
MAX_SIDE = 12_000
MIN_SIDE = 128
FACE_HEIGHTS_PER_FRAME = 4.0  # upper-body framing: the face is about a quarter of the frame height
FACE_TOP_FRACTION = 0.2  # the top of the face box sits this far down the frame
DETECT_SIDE = 1024  # framing detection runs on a copy at most this large

BUNDLED_AVATAR = Path(__file__).resolve().parent / "assets" / "astronaut.png"


def load_image(source: str | os.PathLike[str] | bytes) -> np.ndarray:
    """Read a photo (path or encoded bytes) as an (H, W, 3) uint8 RGB array, safely."""
    if isinstance(source, bytes):
        data, label = source, "the uploaded image"
    else:
        path = Path(source)
        label = str(path)
        if path.is_dir():
            raise ImageError(f"{path} is a folder, not an image file")
        if not path.is_file():
            raise ImageError(f"image file not found: {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageTooLargeError(f"{label} is larger than {MAX_FILE_BYTES // 2**20} MB")
        data = path.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"{label} is larger than {MAX_FILE_BYTES // 2**20} MB")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size  # read from the header, before any pixel is decoded
            if w * h > MAX_PIXELS or max(w, h) > MAX_SIDE:
                raise ImageTooLargeError(
                    f"{label} is too large ({w}×{h}); the limit is {MAX_PIXELS // 10**6} "
                    f"megapixels and {MAX_SIDE} px per side"
                )
            im.load()
            im = _to_8bit(ImageOps.exif_transpose(im))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
            rgb = np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label} is not an image format Pillow reads") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label} is not a readable image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"{label} is too large to decode safely (decompression bomb)"
        ) from exc
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageError(
            f"{label} is too small ({rgb.shape[1]}×{rgb.shape[0]}); the short side must be at "
            f"least {MIN_SIDE} px"
        )
    return np.ascontiguousarray(rgb)


def _to_8bit(im: Image.Image) -> Image.Image:
    """8-bit greyscale from Pillow's high-bit-depth modes ("I;16*", "I", "F"); others unchanged.

    Pillow's own conversion to RGB clips these at 255, so a 16-bit photo turns almost white.
    Integer images are scaled by 65535 when their values fit in 16 bits (16-bit files that
    Pillow opens as "I"), else by their maximum; float images are read as 0–1 when they lie in
    it, else stretched from their minimum to their maximum.
    """
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageError("the image holds NaN or infinite pixel values")
    low, high = float(values.min()), float(values.max())
    if im.mode == "F":
        if not (low >= 0.0 and high <= 1.0):
            values = (values - low) / max(high - low, 1e-12)
        scale = 255.0
    else:
        values = values - min(low, 0.0)
        top = float(values.max())
        scale = 255.0 / (65535.0 if top <= 65535 else top)
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """A square image at ``size``² (area filter down, Lanczos up)."""
    interp = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_LANCZOS4
    return cv2.resize(image, (size, size), interpolation=interp)


def square_box(
    shape: tuple[int, ...], face_box: tuple[float, float, float, float]
) -> tuple[int, int, int]:
    """(left, top, side) of the square crop around a face box (x0, y0, x1, y1) in a photo of
    ``shape`` (module docstring)."""
    h, w = shape[:2]
    x0, y0, x1, y1 = face_box
    short = min(h, w)
    wanted = FACE_HEIGHTS_PER_FRAME * max(y1 - y0, 1.0)
    side = int(round(wanted)) if wanted < 0.75 * short else short
    left = int(round(np.clip((x0 + x1) / 2 - side / 2, 0, w - side)))
    top = int(round(np.clip(y0 - FACE_TOP_FRACTION * side, 0, h - side)))
    return left, top, side


def frame_square(image: np.ndarray, face_box: tuple[float, float, float, float]) -> np.ndarray:
    """Square crop around a face box (x0, y0, x1, y1) in ``image`` pixels (module docstring);
    ``image`` itself when it is the square."""
    left, top, side = square_box(image.shape, face_box)
    if side == image.shape[0] == image.shape[1]:
        return image
    return image[top : top + side, left : left + side]


def _moved(
    ex: Extraction, factor: float, offset: tuple[float, float], shape: tuple[int, ...]
) -> Extraction:
    """An extraction in other pixel coordinates (``xy * factor + offset``); points that end up
    outside an image of ``shape`` get score 0, and points not found stay at the origin."""
    kp = ex.keypoints.copy()  # (134, 3)
    found = kp[:, 2] > 0
    kp[found, :2] = kp[found, :2] * factor + np.asarray(offset, np.float32)
    h, w = shape[:2]
    outside = (kp[:, 0] < 0) | (kp[:, 0] >= w) | (kp[:, 1] < 0) | (kp[:, 1] >= h)
    kp[outside & found, 2] = 0.0
    mesh = ex.face_mesh.copy()  # (478, 3), z in pixel units scales too
    mesh[:, :2] = mesh[:, :2] * factor + np.asarray(offset, np.float32)
    mesh[:, 2] *= factor
    return replace(ex, keypoints=kp, face_mesh=mesh)


def _face_box(points: np.ndarray) -> tuple[float, float, float, float]:
    face = points[layout.FACE]
    face = face[face[:, 2] > 0]
    x0, y0 = face[:, 0].min(), face[:, 1].min()
    x1, y1 = face[:, 0].max(), face[:, 1].max()
    # iBUG points stop at the brows; extend upwards to include the forehead.
    return float(x0), float(y0 - 0.35 * (y1 - y0)), float(x1), float(y1)


def _detect(
    ex: ReferencePoseExtractor,
    image: np.ndarray,
    x0: int = 0,
    y0: int = 0,
    photo_shape: tuple[int, ...] | None = None,
) -> tuple[Extraction, tuple[float, float, float, float], float]:
    """Extraction on ``image`` shrunk to at most :data:`DETECT_SIDE`: the result and its face
    box, both in the coordinates of the photo (of ``photo_shape``) ``image`` was cut from at
    (x0, y0), and the scale used."""
    scale = min(1.0, DETECT_SIDE / max(image.shape[:2]))
    small = image
    if scale < 1.0:
        small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    result = ex(small, use_dwpose=False)  # framing does not depend on the pose model
    if scale < 1.0 or x0 or y0:
        result = _moved(result, 1.0 / scale, (x0, y0), photo_shape or image.shape)
    return result, _face_box(result.keypoints), scale


def _find_face(
    ex: ReferencePoseExtractor, image: np.ndarray
) -> tuple[Extraction, tuple[float, float, float, float], float]:
    """:func:`_detect` on the whole photo; in a panorama (long side over twice the short)
    where that finds nobody, shrinking made the person too small, so overlapping windows of
    twice the short side are searched too and the most confident face wins."""
    try:
        return _detect(ex, image)
    except (NoPersonError, NoFaceError) as exc:
        h, w = image.shape[:2]
        if max(h, w) <= 2 * min(h, w):
            raise
        first_error = exc
    side = 2 * min(h, w)
    starts = range(0, max(h, w) - side + min(h, w), min(h, w))  # half a window apart
    found = []
    for start in starts:
        start = min(start, max(h, w) - side)
        x0, y0 = (start, 0) if w > h else (0, start)
        try:
            window = image[y0 : y0 + side, x0 : x0 + side]
            found.append(_detect(ex, window, x0, y0, image.shape))
        except (NoPersonError, NoFaceError):
            continue
    if not found:
        raise first_error
    return max(found, key=lambda f: f[0].face_score)


def prepare_avatar(
    image: np.ndarray,
    *,
    frame_size: int = 512,
    name: str = "avatar",
    extractor: ReferencePoseExtractor | None = None,
) -> Avatar:
    """Frame, resize and analyse a photo; raises :class:`ImageError` subclasses on bad photos."""
    check_frame_size(frame_size)
    own = extractor is None
    ex = extractor or ReferencePoseExtractor()
    try:
        h, w = image.shape[:2]
        first, box, scale = _find_face(ex, image)
        left, top, side = square_box(image.shape, box)
        if side == h == w == frame_size and scale == 1.0:
            square = image  # already framed at the output size: MediaPipe has seen it
            result = first if ex.dwpose is None else replace(first, keypoints=ex.dwpose(square))
        else:
            square = resize_square(image[top : top + side, left : left + side], frame_size)
            try:
                result = ex(square)
            except (NoPersonError, NoFaceError):
                # MediaPipe is sensitive to scale near its limits (a face turned away, say): the
                # face it found in the whole photo is kept, moved into the square.
                k = frame_size / side
                result = _moved(first, k, (-left * k, -top * k), square.shape)
                if ex.dwpose is not None:
                    result = replace(result, keypoints=ex.dwpose(square))
    finally:
        if own:
            ex.close()
    return Avatar(name, square, result.keypoints, result.face_mesh, photo_notes(result))


def photo_notes(result: Extraction) -> tuple[str, ...]:
    """What about the framed photo may spoil the result, one sentence each (empty when none)."""
    notes = []
    turn = face_turn(result.face_mesh)
    if turn >= TURNED_AWAY_DEGREES:
        notes.append(
            f"the face is turned about {turn:.0f}° from the camera; the mouth and eyes look "
            "best in a photo facing it"
        )
    if result.faces > 1:
        notes.append(
            f"the photo shows {result.faces} faces; one person is animated, and parts of the "
            "others may move with them (use a photo of one person)"
        )
    return tuple(notes)


def load_avatar(
    path: str | os.PathLike[str] | None = None,
    *,
    frame_size: int = 512,
    extractor: ReferencePoseExtractor | None = None,
) -> Avatar:
    """Load and prepare a photo, or read a prepared avatar folder (:mod:`mmgt.avatar_folder`:
    no extraction); ``None`` gives the bundled avatar."""
    src = Path(path) if path is not None else BUNDLED_AVATAR
    if src.is_dir():
        from mmgt.avatar_folder import read_avatar_folder  # noqa: PLC0415 - it imports this module

        return read_avatar_folder(src, frame_size=frame_size)
    name = src.stem if path is not None else "astronaut"
    return prepare_avatar(load_image(src), frame_size=frame_size, name=name, extractor=extractor)
