"""Real data: a talking-person video → one clip of the corpus format (keypoints from MediaPipe).

:func:`prepare_video` decodes the video with PyAV and resamples it to 25 fps (output frame i shows
the source frame on screen at its centre, (i + 0.5) / 25 s after the first video frame), frames
every image like :mod:`mmgt.avatar` (one square crop around the first frame's face, kept for the
whole clip, resized to 512), extracts the 134 keypoints frame by frame, and decodes the audio to
16 kHz mono. The clip has T = ceil(n_samples / 640) frames: a video shorter than its audio holds
its last frame. The reference pose is the first frame's. Frames where no person/face is found
repeat the previous pose (more than 20 % of them fail the clip).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mmgt.audio import load_audio
from mmgt.avatar import _face_box, frame_square
from mmgt.errors import ImageError, InputError
from mmgt.keypoints.extractor import ReferencePoseExtractor
from mmgt.train.corpus import format as fmt
from mmgt.train.corpus.motion import frame_count
from mmgt.types import FPS
from mmgt.video import video_frames

log = logging.getLogger(__name__)
FRAME = 512
MAX_FAILED_FRACTION = 0.2


class VideoFramer:
    """Crop box from the first frame's face, then crop + resize + extract for every frame."""

    def __init__(self, extractor: ReferencePoseExtractor) -> None:
        self.extractor = extractor
        self.box: tuple[float, float, float, float] | None = None

    def square(self, image: np.ndarray) -> np.ndarray:
        if self.box is None:
            self.box = _face_box(self.extractor(image, use_dwpose=False).keypoints)
        framed = frame_square(image, self.box)
        interp = cv2.INTER_AREA if framed.shape[0] > FRAME else cv2.INTER_LANCZOS4
        return cv2.resize(np.ascontiguousarray(framed), (FRAME, FRAME), interpolation=interp)

    def keypoints(self, image: np.ndarray) -> np.ndarray:
        return self.extractor(self.square(image)).keypoints


def extract_keypoints(
    video_path: str | os.PathLike, frames: int, extractor: ReferencePoseExtractor
) -> tuple[np.ndarray, int]:
    """((frames, 134, 3) keypoints at 25 fps in a 512 frame, number of frames that failed)."""
    framer = VideoFramer(extractor)
    out = np.zeros((frames, 134, 3), np.float32)
    done, failed, last = 0, 0, None
    current: np.ndarray | None = None  # source frame on screen
    cached: np.ndarray | None = None  # its keypoints

    def emit(until_s: float) -> None:
        nonlocal done, failed, cached, last
        while done < frames and (done + 0.5) / FPS < until_s:
            if cached is None:
                try:
                    cached = framer.keypoints(current)
                except ImageError as exc:
                    if last is None:
                        raise InputError(f"{video_path}: first frame unusable ({exc})") from exc
                    failed, cached = failed + 1, last
            out[done], last = cached, cached
            done += 1

    source = video_frames(Path(video_path))
    try:
        for t, rgb in source:
            if current is not None:
                emit(t)
            current, cached = rgb, None
            if done >= frames:
                break
    finally:
        source.close()
    if current is None:
        raise InputError(f"{video_path} contains no video frames")
    emit(np.inf)
    return out, failed


def prepare_video(
    video_path: str | os.PathLike,
    out_root: str | os.PathLike,
    clip_id: str,
    split: str = "train",
    *,
    extractor: ReferencePoseExtractor | None = None,
    text: str = "",
) -> dict[str, Any]:
    """Add ``video_path`` to the corpus at ``out_root`` as clip ``clip_id``; returns its record.

    A clip id already in the manifest is left alone (its record is returned).
    """
    root, path = Path(out_root), Path(video_path)
    if split not in ("train", "val", "test"):
        raise InputError(f"split must be train, val or test, got {split!r}")
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    root.mkdir(parents=True, exist_ok=True)
    for clip in fmt.read_corpus(root) if (root / fmt.MANIFEST).is_file() else []:
        if clip.id == clip_id:
            log.info("clip %s is already in %s", clip_id, root)
            return {"id": clip.id, "split": clip.split, "audio": clip.audio, "motion": clip.motion}
    audio = load_audio(path)
    frames = frame_count(len(audio))
    own = extractor is None
    ex = extractor or ReferencePoseExtractor()
    try:
        keypoints, failed = extract_keypoints(path, frames, ex)
    finally:
        if own:
            ex.close()
    if failed > MAX_FAILED_FRACTION * frames:
        raise InputError(f"{path}: no person/face in {failed} of {frames} frames")
    if failed:
        log.warning(
            "%s: %d of %d frames repeat the previous pose (no face found)", path, failed, frames
        )
    record = {
        "id": clip_id,
        "split": split,
        "engine": "video",
        "voice": "",
        "rate": None,
        "pitch": None,
        "text": text,
        "synthetic": False,
        "source": path.name,
        "failed_frames": failed,
    }
    record = fmt.write_clip(root, record, audio, keypoints, keypoints[0])
    fmt.append_jsonl(root, record)
    return record
