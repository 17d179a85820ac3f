"""Prepared avatar folders: what ``mmgt prepare-avatar`` writes, read back without the extractor.

A folder holds the framed photo and its reference pose, so a photo is analysed once and then
rendered, served or corrected by hand any number of times (``mmgt render --image DIR``,
``python -m server --avatar NAME=DIR``):

* ``avatar.png`` — the framed square photo (RGB);
* ``reference_pose.npy`` — (134, 3) float32 keypoints of ``avatar.png`` (x, y in its pixels,
  score; the layout of :mod:`mmgt.keypoints.layout`); edit a point, or set its score to 0 to
  hide it, and the next render uses the change;
* ``face_mesh.npy`` — (478, 3) float32 dense face landmarks (optional);
* ``avatar.json`` — format, version, name, frame size, notes about the photo, the pose model
  and the source file (optional: a folder with the two files above is read too);
* ``pose.png`` — the reference pose drawn in the official colours (for viewing; not read).

Arrays are read with ``allow_pickle=False``. A folder made at another size is resized to the
frame size asked for, with its points scaled alike.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mmgt.avatar import load_image, resize_square
from mmgt.errors import ImageError, NoFaceError
from mmgt.keypoints import layout
from mmgt.keypoints.render import render_pose
from mmgt.signals import interrupts_held
from mmgt.types import Avatar, check_frame_size

FORMAT = "mmgt-avatar"
VERSION = 1
IMAGE_FILE = "avatar.png"
POSE_FILE = "reference_pose.npy"
MESH_FILE = "face_mesh.npy"
META_FILE = "avatar.json"
PREVIEW_FILE = "pose.png"
MESH_POINTS = 478


def is_avatar_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a prepared avatar (its photo and its pose)."""
    path = Path(path)
    return path.is_dir() and (path / IMAGE_FILE).is_file() and (path / POSE_FILE).is_file()


def write_avatar_folder(
    avatar: Avatar, folder: str | os.PathLike[str], *, source: str = "", pose_model: str = ""
) -> Path:
    """Write ``avatar`` into ``folder`` (made if missing; its avatar files are replaced).

    The files are written under temporary names and renamed into place together once all are
    written, so an interrupted or failed write leaves the previous avatar (or nothing), never
    half a file or a photo with another photo's pose.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ImageError(f"{folder} is a file; give a folder for the avatar's files")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": avatar.name,
        "frame_size": avatar.frame_size,
        "notes": list(avatar.notes),
        "pose_model": pose_model,
        "source": source,
        "layout": "134 keypoints (x, y in avatar.png pixels, score): OpenPose-18 body, 6 feet, "
        "68 face (iBUG), 21 + 21 hands",
    }
    writers = {
        IMAGE_FILE: lambda f: Image.fromarray(avatar.image).save(f, format="PNG"),
        PREVIEW_FILE: lambda f: Image.fromarray(
            render_pose(avatar.reference_pose, avatar.frame_size)
        ).save(f, format="PNG"),
        POSE_FILE: lambda f: np.save(f, avatar.reference_pose.astype(np.float32)),
        META_FILE: lambda f: f.write(json.dumps(meta, indent=2).encode() + b"\n"),
    }
    if avatar.face_mesh is not None:
        writers[MESH_FILE] = lambda f: np.save(f, np.asarray(avatar.face_mesh, np.float32))
    tmps = {name: folder / f".{name}.{os.getpid()}.tmp" for name in writers}
    try:
        for name, write in writers.items():
            with open(tmps[name], "wb") as f:
                write(f)
        # All written: renamed into place together, with Ctrl+C and SIGTERM held, so the
        # folder never pairs the new photo with the old pose.
        with interrupts_held():
            for name, tmp in tmps.items():
                tmp.replace(folder / name)
            if MESH_FILE not in writers:
                (folder / MESH_FILE).unlink(missing_ok=True)  # not another photo's mesh
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    return folder


def read_avatar_folder(folder: str | os.PathLike[str], *, frame_size: int = 512) -> Avatar:
    """The avatar in ``folder`` at ``frame_size``; a clear :class:`ImageError` (naming the
    file) for anything missing or malformed, :class:`NoFaceError` when its pose shows no face."""
    check_frame_size(frame_size)
    folder = Path(folder)
    if not is_avatar_folder(folder):
        raise ImageError(
            f"{folder} is a folder but not a prepared avatar: it needs {IMAGE_FILE} and "
            f"{POSE_FILE} (mmgt prepare-avatar --image PHOTO --out {folder} writes them)"
        )
    meta = folder_meta(folder)
    image = load_image(folder / IMAGE_FILE)
    h, w = image.shape[:2]
    if h != w:
        raise ImageError(f"{folder / IMAGE_FILE} must be square (it is {w}×{h}); "
                         "prepare-avatar writes the framed square photo")  # fmt: skip
    pose = _read_array(folder / POSE_FILE, (layout.NUM_KEYPOINTS, layout.NUM_CHANNELS))
    if (pose[:, 2] < 0).any():
        raise ImageError(f"{folder / POSE_FILE}: scores (column 2) must not be negative")
    face_shown = int((pose[layout.FACE, 2] >= layout.VISIBILITY_THRESHOLD).sum())
    if face_shown < len(layout.FACE) // 2:
        raise NoFaceError(
            f"{folder / POSE_FILE} shows {face_shown} of the {len(layout.FACE)} face points "
            f"(score ≥ {layout.VISIBILITY_THRESHOLD}); the face must be visible"
        )
    mesh = None
    if (folder / MESH_FILE).is_file():
        mesh = _read_array(folder / MESH_FILE, (MESH_POINTS, 3))
    if w != frame_size:  # points scale with the photo (mesh depth too, in pixel units)
        k = frame_size / w
        image = resize_square(image, frame_size)
        pose = pose.copy()
        pose[:, :2] *= k
        if mesh is not None:
            mesh = mesh * np.float32(k)
    notes = tuple(str(n) for n in meta.get("notes", ()))
    if w < frame_size:
        notes += (f"the prepared avatar is {w}×{w} px and is enlarged to {frame_size}×"
                  f"{frame_size} (blurrier); prepare it at --size {frame_size}",)  # fmt: skip
    name = str(meta.get("name") or folder.resolve().name)
    return Avatar(name, np.ascontiguousarray(image), pose, mesh, notes)


def folder_meta(folder: str | os.PathLike[str]) -> dict:
    """The checked contents of the folder's ``avatar.json`` ({} when it has none)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImageError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ImageError(f"{path} is not an avatar description (format {FORMAT!r} expected)")
    version = meta.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise ImageError(f"{path} has version {version!r}; this engine reads versions 1–"
                         f"{VERSION} (a newer mmgt wrote it?)")  # fmt: skip
    notes = meta.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise ImageError(f"{path}: notes must be a list of strings")
    return meta


def _read_array(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A finite float32 array of ``shape`` from a .npy file, never unpickled."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ImageError(f"{path} is not a NumPy array file (or holds pickled objects, which "
                         f"are not read): {exc}") from None  # fmt: skip
    if arr.shape != shape or not np.issubdtype(arr.dtype, np.number):
        raise ImageError(f"{path} must hold a {shape[0]}×{shape[1]} array of numbers, "
                         f"got {arr.shape} {arr.dtype}")  # fmt: skip
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ImageError(f"{path} holds NaN or infinite values")
    return arr
