"""Avatars a server can show, prepared once and cached: public ones (the bundled avatar and
the photos, or folders made by ``mmgt prepare-avatar``, that the operator names with
``--avatar NAME=PHOTO``; listed and never evicted) and uploaded photos (private, least recently
used dropped).

Uploads are checked before any work: size, image type (by content, not by name), and the
decompression-bomb limits of :func:`mmgt.avatar.load_image`; photos without a person or a face
are refused with the extractor's message. Preparation (MediaPipe) runs in the store's own
worker thread, one photo at a time; at most ``max_pending`` uploads wait for it, and more are
refused as busy, so a flood of uploads neither queues without bound nor takes the threads that
live sessions encode their frames in.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from mmgt.avatar import BUNDLED_AVATAR, load_image, prepare_avatar
from mmgt.avatar_folder import read_avatar_folder
from mmgt.errors import ImageError, ImageTooLargeError, MMGTError
from mmgt.keypoints.dwpose import DWPose
from mmgt.keypoints.extractor import ReferencePoseExtractor
from mmgt.types import Avatar

log = logging.getLogger(__name__)

DEFAULT_ID = "default"
PUBLIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
UPLOAD_ID = re.compile(r"u[0-9a-f]{16}")  # "u" + a content hash prefix
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF8", b"BM")  # and RIFF…WEBP


def looks_like_image(data: bytes) -> bool:
    """Whether ``data`` starts like a JPEG, PNG, WebP, GIF or BMP file (a WAV is RIFF too)."""
    return data.startswith(IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


class UploadError(ImageError):
    """An upload refused before decoding: not a photo (HTTP 415) or a malformed form (400)."""

    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(message)
        self.status = status


class UploadBusy(MMGTError):
    """Too many uploads are already waiting to be prepared; the client may retry shortly."""


def check_public_name(name: str) -> str:
    """A name for ``--avatar NAME=PHOTO``: 1–40 letters, digits, ``_ . -``, not ``default``
    and not shaped like an upload id; ``ValueError`` says why not."""
    if not PUBLIC_NAME.fullmatch(name) or UPLOAD_ID.fullmatch(name) or name == DEFAULT_ID:
        raise ValueError(
            f"avatar name {name!r}: use 1–40 letters, digits, '_', '.' or '-' (starting with a "
            f"letter or digit), other than {DEFAULT_ID!r} and the u+16-hex form of upload ids"
        )
    return name


class AvatarStore:
    """Prepared avatars by id: public ones, and uploads keyed by content hash, least recently
    used dropped."""

    def __init__(
        self,
        frame_size: int,
        max_uploads: int = 32,
        max_bytes: int = 10 << 20,
        *,
        max_pending: int = 4,
        dwpose_dir: str | None = None,
        device: str = "cpu",
    ) -> None:
        """``dwpose_dir``: take reference poses from the official DWPose models there."""
        self.frame_size = frame_size
        self.max_uploads = max_uploads
        self.max_bytes = max_bytes
        self.max_pending = max_pending
        self.dwpose_dir, self.device = dwpose_dir, device
        self._dwpose: DWPose | None = None  # loaded on first use, then kept
        self._public: dict[str, Avatar] = {}  # the bundled avatar and the operator's
        self._uploads: collections.OrderedDict[str, Avatar] = collections.OrderedDict()
        self._pending = 0  # uploads being prepared or waiting for the worker
        # One thread: MediaPipe graphs are not shared across threads, and photos queue here
        # rather than in the event loop's default executor, which live sessions use.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="avatar-prepare")

    def _prepare(self, data: bytes | Path | None, name: str) -> Avatar:
        if isinstance(data, Path) and data.is_dir():  # made by mmgt prepare-avatar
            return replace(read_avatar_folder(data, frame_size=self.frame_size), name=name)
        image = load_image(BUNDLED_AVATAR if data is None else data)
        if self.dwpose_dir is not None and self._dwpose is None:
            self._dwpose = DWPose(self.dwpose_dir, device=self.device)
        with ReferencePoseExtractor(dwpose=self._dwpose) as extractor:
            return prepare_avatar(image, frame_size=self.frame_size, name=name, extractor=extractor)

    async def _in_worker(self, data: bytes | Path | None, name: str) -> Avatar:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self._prepare, data, name)

    def close(self) -> None:
        """Stop the worker (photos still waiting are dropped)."""
        self._worker.shutdown(wait=False, cancel_futures=True)

    async def load_default(self) -> Avatar:
        if DEFAULT_ID not in self._public:
            self._public[DEFAULT_ID] = await self._in_worker(None, "astronaut")
        return self._public[DEFAULT_ID]

    async def add_public(self, name: str, photo: str | Path) -> Avatar:
        """Prepare the operator's photo as public avatar ``name``; an unusable photo is an
        :class:`~mmgt.errors.InputError` naming it."""
        check_public_name(name)
        try:
            avatar = await self._in_worker(Path(photo), name)
        except MMGTError as exc:
            raise type(exc)(f"--avatar {name}={photo}: {exc}") from exc
        for note in avatar.notes:  # usable, but the operator should know
            log.warning("--avatar %s=%s: %s", name, photo, note)
        self._public[name] = avatar
        return avatar

    def get(self, avatar_id: str) -> Avatar | None:
        if avatar_id in self._public:
            return self._public[avatar_id]
        avatar = self._uploads.get(avatar_id)
        if avatar is not None:
            self._uploads.move_to_end(avatar_id)
        return avatar

    def public_ids(self) -> list[str]:
        """The avatars anyone may list: the bundled one, then the operator's. Uploads are
        private: usable by whoever holds their id (a content hash), never listed, so one user's
        photo is not offered to the next."""
        return list(self._public)

    async def add_upload(self, data: bytes) -> tuple[str, Avatar]:
        """Check, decode and prepare an uploaded photo; returns (id, avatar)."""
        if len(data) == 0:
            raise UploadError("the upload is empty", status=400)
        if len(data) > self.max_bytes:
            raise ImageTooLargeError(f"the photo is larger than {self.max_bytes // 2**20} MB")
        if not looks_like_image(data):
            raise UploadError("the upload is not a JPEG, PNG, WebP, GIF or BMP image")
        avatar_id = "u" + hashlib.sha256(data).hexdigest()[:16]
        known = self.get(avatar_id)
        if known is not None:
            return avatar_id, known
        if self._pending >= self.max_pending:
            raise UploadBusy(
                f"the server is preparing {self._pending} other photos; try again in a few seconds"
            )
        self._pending += 1
        try:
            avatar = await self._in_worker(data, avatar_id)
        finally:
            self._pending -= 1
        self._uploads[avatar_id] = avatar
        while len(self._uploads) > self.max_uploads:
            self._uploads.popitem(last=False)
        return avatar_id, avatar
