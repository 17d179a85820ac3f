"""The corpus format (docs/corpus.md): manifest.jsonl + audio/<id>.wav + motion/<id>.npz.

Synthetic and real (video-extracted) clips share it. Files are written atomically (temporary name,
then rename; motion last), so a clip whose motion file exists is complete; the manifest is only
appended by one process and gets one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.audio import load_audio, write_wav
from mmgt.drivers.rig import RigCurves
from mmgt.errors import InputError
from mmgt.keypoints import layout
from mmgt.types import FPS

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.jsonl"
SAMPLE_RATE = 16000
FORMAT_VERSION = 1
PHONE_DTYPE = np.dtype([("phone", "U8"), ("start_s", "<f4"), ("end_s", "<f4")])
WORD_DTYPE = np.dtype([("word", "U40"), ("start_s", "<f4"), ("end_s", "<f4")])
CURVE_NAMES = tuple(RigCurves.__dataclass_fields__)
_FIELDS = ("id", "split", "engine", "voice", "rate", "pitch", "text", "seconds", "fps")
_FIELDS += ("sample_rate", "audio", "motion", "synthetic")


@dataclass(frozen=True)
class Clip:
    """One manifest entry; paths are relative to ``root``. Unknown keys are kept in ``extra``."""

    id: str
    split: str
    engine: str
    voice: str
    rate: float | None
    pitch: float | None
    text: str
    seconds: float
    fps: float
    sample_rate: int
    audio: str
    motion: str
    synthetic: bool
    root: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: dict[str, Any], root: Path) -> Clip:
        known = {k: record.get(k) for k in _FIELDS}
        extra = {k: v for k, v in record.items() if k not in _FIELDS}
        return cls(**known, root=Path(root), extra=extra)

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(audio (n,) float32 at 16 kHz, keypoints (T, 134, 3) float32, reference (134, 3))."""
        audio = load_audio(self.root / self.audio, sample_rate=SAMPLE_RATE)
        with np.load(self.root / self.motion) as data:
            return audio, data["keypoints"].astype(np.float32), data["reference"].astype(np.float32)

    def motion_data(self) -> dict[str, np.ndarray]:
        """Everything in the motion file (keypoints, reference, phones, words, curves, …)."""
        with np.load(self.root / self.motion) as data:
            return {k: data[k] for k in data.files}

    def curves(self) -> RigCurves | None:
        """The rig curves the keypoints were rendered from (None for real data)."""
        data = self.motion_data()
        if "curves" not in data:
            return None
        names = [str(n) for n in data["curve_names"]]
        return RigCurves(
            **{n: data["curves"][:, i].astype(np.float64) for i, n in enumerate(names)}
        )


def read_corpus(root: str | os.PathLike, split: str | None = None) -> list[Clip]:
    """All clips of a corpus folder (optionally one split), in manifest order."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(
            f"{root} is not a corpus folder (no {MANIFEST}); make one with "
            "`mmgt data corpus --out DIR` or `mmgt data extract`"
        )
    clips, seen = [], set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            clip = Clip.from_record(json.loads(line), root)
        except (json.JSONDecodeError, TypeError) as exc:
            log.warning("%s line %d is not a clip record (%s); skipped", path, n, exc)
            continue
        if clip.id in seen:
            continue
        seen.add(clip.id)
        if split is None or clip.split == split:
            clips.append(clip)
    return clips


def manifest_ids(root: Path, name: str = MANIFEST) -> set[str]:
    """Ids recorded in ``manifest.jsonl`` (or ``skipped.jsonl``); malformed lines are ignored."""
    path = Path(root) / name
    ids = set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return ids


def append_jsonl(root: Path, record: dict[str, Any], name: str = MANIFEST) -> None:
    """Append one record (repairing a missing final newline left by an interrupted write)."""
    path = Path(root) / name
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            prefix = "" if f.read(1) == b"\n" else "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(prefix + json.dumps(record, ensure_ascii=False) + "\n")


def clip_paths(root: Path, clip_id: str) -> tuple[Path, Path]:
    return Path(root) / "audio" / f"{clip_id}.wav", Path(root) / "motion" / f"{clip_id}.npz"


def write_clip(
    root: str | os.PathLike,
    record: dict[str, Any],
    audio16k: np.ndarray,
    keypoints: np.ndarray,
    reference: np.ndarray,
    *,
    phones: np.ndarray | None = None,
    words: np.ndarray | None = None,
    curves: RigCurves | None = None,
) -> dict[str, Any]:
    """Write one clip's files atomically; returns its complete manifest record."""
    root = Path(root)
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (layout.NUM_KEYPOINTS, 3) or not np.isfinite(kp).all():
        raise ValueError(f"keypoints must be finite (T, 134, 3), got {kp.shape}")
    audio_path, motion_path = clip_paths(root, record["id"])
    record = dict(record)
    record |= {
        "seconds": round(len(audio16k) / SAMPLE_RATE, 4),
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "audio": audio_path.relative_to(root).as_posix(),
        "motion": motion_path.relative_to(root).as_posix(),
        "frames": int(len(kp)),
        "frame_size": layout.OFFICIAL_FRAME,
    }
    arrays: dict[str, np.ndarray] = {
        "keypoints": kp,
        "reference": np.asarray(reference, np.float32),
        "phones": np.asarray(phones if phones is not None else [], PHONE_DTYPE),
        "words": np.asarray(words if words is not None else [], WORD_DTYPE),
        "meta": np.array(json.dumps(record, ensure_ascii=False)),
    }
    if curves is not None:
        arrays["curves"] = np.stack([getattr(curves, n) for n in CURVE_NAMES], 1).astype(np.float32)
        arrays["curve_names"] = np.array(CURVE_NAMES)
    for path in (audio_path, motion_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp_audio = audio_path.with_name(audio_path.name + f".{os.getpid()}.tmp")
    write_wav(tmp_audio, audio16k, SAMPLE_RATE)
    os.replace(tmp_audio, audio_path)
    tmp_motion = motion_path.with_name(motion_path.name + f".{os.getpid()}.tmp")
    with open(tmp_motion, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp_motion, motion_path)
    return record


def recover_record(root: Path, clip_id: str) -> dict[str, Any] | None:
    """The manifest record stored in a complete clip's motion file (None if incomplete)."""
    audio_path, motion_path = clip_paths(root, clip_id)
    if not (audio_path.is_file() and motion_path.is_file()):
        return None
    try:
        with np.load(motion_path) as data:
            return json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError) as exc:
        log.warning("clip %s: unreadable motion file (%s); it will be regenerated", clip_id, exc)
        return None


def segments_array(segments: list, dtype: np.dtype) -> np.ndarray:
    """Structured array from alignment segments (label, start, end)."""
    return np.array([(s.label, s.start, s.end) for s in segments], dtype=dtype)
