"""Stage-2 training clips: video frames, keypoints and speech, and the conditions cut from them.

A clip folder holds ``<id>.npz`` files (``numpy.load``, no pickle) with

* ``frames``    (T, S, S, 3) uint8 RGB video at 25 fps;
* ``keypoints`` (T, 134, 3) float32, x/y in pixels of the S × S frame, score in [0, 1];
* ``audio``     (n,) float32 16 kHz mono speech covering the frames (ceil(n / 640) ≥ T).

:func:`generate_clips` writes such clips without any dataset: speech cut from the bundled sample
drives the procedural driver around the bundled avatar's reference pose, and the warp renderer
animates the photo, exactly as ``mmgt render --driver procedural --renderer warp`` does.
:func:`video_to_clips` cuts a real talking-person video into clips (the corpus' video reader
and MediaPipe keypoints, :mod:`mmgt.train.corpus.video`).

:class:`Stage2Clips` turns clips into training samples at the model resolution R with the
project's own condition code (what inference feeds the networks): pose images
(:func:`~mmgt.keypoints.render.render_pose_sequence`), motion masks wired into the MM-HAA
branches (:func:`~mmgt.masks.motion_masks_clip`, :func:`~mmgt.models.mmhaa.branch_masks`) and
wav2vec2 hidden states of the whole clip cut into ±2-frame windows (:mod:`mmgt.audio.wav2vec`;
the audio projection runs in the training step because process 2 trains it). Frames are
VAE-encoded in the training step.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mmgt.audio import wav2vec as w2v
from mmgt.errors import InputError
from mmgt.keypoints.render import render_pose_sequence
from mmgt.masks import motion_masks_clip
from mmgt.models.mmhaa import MASK_MODES, BranchMasks, branch_masks
from mmgt.train.stage2_augment import apply_crop, crop_box, reference_and_target, video_window
from mmgt.types import FPS, KeypointSeq
from mmgt.weights.stage2_models import Stage2Models

HOP = w2v.HOP  # 640 samples of 16 kHz audio per 25 fps frame
# "official-train": the wiring the official training data used (full branch = hands mask).
TRAIN_MASK_MODES = (*MASK_MODES, "official-train")
REFERENCES = ("random", "first")  # official: any frame of the clip; paper: the window's first
_BAD_NPZ = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def _write_clip(path: Path, frames: np.ndarray, points: np.ndarray, audio: np.ndarray) -> None:
    """Write one clip atomically (a crash leaves ``*.tmp.npz``, which readers skip)."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=frames, keypoints=points.astype(np.float32),
             audio=audio.astype(np.float32))  # fmt: skip
    os.replace(tmp, path)


def generate_clips(
    out_dir: str | os.PathLike[str], count: int, *, size: int = 128, frames: int = 32,
    seed: int = 0,
) -> list[Path]:  # fmt: skip
    """Write ``count`` clips of ``frames`` frames at ``size``² (existing clips are kept)."""
    from mmgt.audio import extract_light_features, load_audio
    from mmgt.avatar import BUNDLED_AVATAR, load_avatar
    from mmgt.drivers import make_driver
    from mmgt.renderers import make_renderer

    if count < 1 or frames < 1:
        raise InputError("--generate needs at least one clip of at least one frame")
    if size < 64 or size % 64:
        raise InputError(f"clip size must be a positive multiple of 64, got {size}")
    out = Path(out_dir)
    paths = [out / f"gen{seed}-{i:04d}.npz" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if not missing:
        return paths
    out.mkdir(parents=True, exist_ok=True)
    avatar = load_avatar(None, frame_size=size)
    speech = load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))
    n = frames * HOP
    renderer = make_renderer("warp")
    state = renderer.prepare(avatar)
    for i, path in missing:
        rng = np.random.default_rng([seed, i])
        start = int(rng.integers(0, max(speech.size - n, 0) + 1))
        audio = np.pad(speech[start : start + n], (0, max(n - speech.size, 0)))
        driver = make_driver("procedural", seed=seed * 100_003 + i)
        poses = driver.generate(extract_light_features(audio), avatar.reference_pose,
                                frame_size=size)  # fmt: skip
        stream = renderer.open_stream(state)
        video = np.stack(stream.push(poses))  # (T, S, S, 3)
        stream.close()
        _write_clip(path, video, poses.points, audio)
    return paths


def video_to_clips(
    video_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, size: int = 512,
    clip_frames: int = 100, extractor=None,  # noqa: ANN001 - ReferencePoseExtractor
    separator=None,  # noqa: ANN001 - mmgt.audio.separation.VocalSeparator
) -> list[Path]:  # fmt: skip
    """Cut a talking-person video into clips ``<stem>-<k>.npz`` of ``clip_frames`` frames.

    As the corpus reader (:func:`mmgt.train.corpus.video.extract_keypoints`): 25 fps, one square
    crop around the first frame's face for the whole video, MediaPipe keypoints per frame (a
    frame without a person repeats the previous pose), 16 kHz mono audio; frames are resized to
    ``size``² and the keypoints scaled with them. With a ``separator`` the clips keep the
    separated vocals, as the official data preparation does before wav2vec2."""
    from mmgt.audio import load_audio, load_audio_native
    from mmgt.keypoints.extractor import ReferencePoseExtractor
    from mmgt.train.corpus.video import FRAME, VideoFramer, extract_keypoints
    from mmgt.video import video_frames

    path = Path(video_path)
    if not path.is_file():
        raise InputError(f"video file not found: {path}")
    if size < 64 or size % 64 or clip_frames < 1:
        raise InputError(f"clip size must be a multiple of 64 and clips ≥ 1 frame ({path})")
    audio = load_audio(path)
    if separator is not None:
        vocals = separator.vocals(*load_audio_native(path))
        audio = np.pad(vocals, (0, max(0, audio.size - vocals.size)))[: audio.size]
    total = -(-audio.size // HOP)
    audio = np.pad(audio, (0, total * HOP - audio.size))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    own = extractor is None
    ex = extractor or ReferencePoseExtractor()
    try:
        points, _ = extract_keypoints(path, total, ex)  # (T, 134, 3) in a 512 frame
        points = KeypointSeq(points, FRAME).resized(size).points
        framer = VideoFramer(ex)
        frames = _frames_at_25fps(video_frames(path), total,
                                  lambda rgb: _resize(framer.square(rgb), size))  # fmt: skip
        paths, clip = [], []
        for i, frame in enumerate(frames):  # one clip in memory at a time
            clip.append(frame)
            if len(clip) == clip_frames or i == total - 1:
                start, stop = i + 1 - len(clip), i + 1
                paths.append(out / f"{path.stem}-{len(paths):03d}.npz")
                _write_clip(paths[-1], np.stack(clip), points[start:stop],
                            audio[start * HOP : stop * HOP])  # fmt: skip
                clip = []
    finally:
        if own:
            ex.close()
    return paths


def _frames_at_25fps(source, total: int, convert):  # noqa: ANN001, ANN202 - generators
    """Frame i = the source frame on screen at (i + 0.5) / 25 s (the corpus reader's rule; a
    video shorter than its audio holds its last frame); ``convert`` runs once per source frame
    shown."""
    done, current = 0, None
    try:
        for t, rgb in source:
            while current is not None and done < total and (done + 0.5) / FPS < t:
                yield current
                done += 1
            if done >= total:
                return
            current = convert(rgb)
    finally:
        source.close()
    while current is not None and done < total:
        yield current
        done += 1


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


def find_clips(folder: str | os.PathLike[str]) -> list[Path]:
    """The clip files of ``folder`` (sorted); a missing or empty folder is an input error."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"clip folder not found: {root}")
    paths = sorted(p for p in root.glob("*.npz") if not p.name.endswith(".tmp.npz"))
    if not paths:
        raise InputError(f"no clips (*.npz) in {root}; see docs/training_stage2.md")
    return paths


def read_clip(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames (T, S, S, 3) uint8, keypoints (T, 134, 3), audio (n,)) of one checked clip."""
    try:
        with np.load(path, allow_pickle=False) as z:
            frames, points, audio = z["frames"], z["keypoints"], z["audio"]
    except _BAD_NPZ as exc:
        raise InputError(f"{path}: not a stage-2 clip (frames, keypoints, audio): {exc}") from exc
    t = len(frames)
    if frames.ndim != 4 or frames.shape[1] != frames.shape[2] or frames.shape[3] != 3 or t < 1:
        raise InputError(f"{path}: frames must be (T, S, S, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise InputError(f"{path}: frames must be uint8, got {frames.dtype}")
    if points.shape != (t, 134, 3) or not np.isfinite(points).all():
        raise InputError(f"{path}: keypoints must be finite ({t}, 134, 3), got {points.shape}")
    if audio.ndim != 1 or -(-audio.size // HOP) < t or not np.isfinite(audio).all():
        raise InputError(f"{path}: audio must be finite 16 kHz mono covering {t} frames")
    return frames, points.astype(np.float32), audio.astype(np.float32)


def _length(path: Path) -> int:
    """Frame count of a clip without loading its video."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return len(z["keypoints"])
    except _BAD_NPZ as exc:
        raise InputError(f"{path}: not a stage-2 clip (frames, keypoints, audio): {exc}") from exc


def wire_masks(seq: KeypointSeq, mode: str) -> BranchMasks:
    """MM-HAA branch masks of every frame of ``seq`` (levels of (T, h_k·w_k))."""
    if mode not in TRAIN_MASK_MODES:
        raise InputError(f"unknown mask mode {mode!r}; choose {', '.join(TRAIN_MASK_MODES)}")
    names = ("face_hands", "lips") + (("hands",) if mode == "official-train" else ())
    sets = motion_masks_clip(seq, names=names)
    if mode != "official-train":
        return branch_masks(sets, mode)
    wired = branch_masks(sets, "official")
    hands = tuple(
        torch.from_numpy(np.stack([m.pyramid["hands"][k].reshape(-1) for m in sets]))
        for k in range(len(wired.full))
    )
    return BranchMasks(hands, wired.face, wired.lip)


@dataclass(frozen=True)
class ClipConditions:
    """One clip at the model resolution R (the per-frame inputs of the stage-2 networks)."""

    frames: np.ndarray  # (T, R, R, 3) uint8 video
    pose: np.ndarray  # (T, R, R, 3) uint8 pose images
    masks: BranchMasks | None  # levels of (T, h_k·w_k) float32 (process 2)
    hidden: np.ndarray | None  # (T, layers, C) float32 wav2vec2 hidden states (process 2)


@dataclass(frozen=True)
class Stage2Batch:
    """B samples of F frames (process 1: F = 1)."""

    frames: torch.Tensor  # (B, F, 3, R, R) in [−1, 1]
    reference: torch.Tensor  # (B, 3, R, R) in [−1, 1]
    reference_images: list[np.ndarray]  # B × (R, R, 3) uint8 (CLIP input)
    pose: torch.Tensor  # (B, 3, F, R, R) in [0, 1]
    masks: BranchMasks | None  # levels of (B·F, h_k·w_k), sample-major (process 2)
    windows: torch.Tensor | None  # (B, F, 5, layers, C) (process 2)


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, R, R, 3) uint8 → (N, 3, R, R) float32 in [−1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Stage2Clips:
    """Random training samples from clip files (conditions computed once per clip, LRU-cached).

    ``audio=True`` (process 2) adds wav2vec2 windows and MM-HAA masks. ``reference`` picks the
    reference frame: ``random`` (official data loader: any frame of the clip) or ``first``
    (the paper: the window's first frame). ``resolution``: the training frame side (default:
    the model's; the official process 1 trained at 256²). With one frame (process 1) and a
    random reference, the target is drawn at least 25 frames from it, and ``augment`` adds the
    official random resized crop (:mod:`mmgt.train.stage2_augment`)."""

    def __init__(
        self, paths: list[Path], models: Stage2Models, *, frames: int, audio: bool,
        mask_mode: str = "official", reference: str = "random", cache_clips: int = 64,
        resolution: int | None = None, augment: bool = False,
    ) -> None:  # fmt: skip
        if mask_mode not in TRAIN_MASK_MODES:
            raise InputError(f"unknown mask mode {mask_mode!r}; choose "
                             f"{', '.join(TRAIN_MASK_MODES)}")  # fmt: skip
        if reference not in REFERENCES:
            raise InputError(f"unknown reference {reference!r}; choose {', '.join(REFERENCES)}")
        if frames < 1:
            raise InputError(f"a training window needs at least one frame, got {frames}")
        self.resolution = resolution or models.resolution
        if self.resolution < 64 or self.resolution % 64:
            raise InputError(f"the training size must be a multiple of 64, got {self.resolution}")
        self.models, self.frames, self.audio = models, frames, audio
        self.mask_mode, self.reference, self.cache_clips = mask_mode, reference, cache_clips
        self.augment = augment and frames == 1  # the official image-level crop (process 1)
        lengths = [_length(p) for p in paths]
        self.paths = [p for p, n in zip(paths, lengths, strict=True) if n >= frames]
        self.lengths = [n for n in lengths if n >= frames]
        if not self.paths:
            where = paths[0].parent if paths else "the clip folder"
            raise InputError(f"no clip in {where} has the {frames} frames of a training window "
                             f"(longest: {max(lengths, default=0)})")  # fmt: skip
        self._cache: OrderedDict[int, ClipConditions] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def conditions(self, index: int) -> ClipConditions:
        """The conditions of clip ``index`` at the model resolution (LRU-cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        frames, points, audio = read_clip(self.paths[index])
        res, t = self.resolution, len(frames)
        seq = KeypointSeq(points, frames.shape[1]).resized(res)
        if frames.shape[1] != res:  # as the renderer resizes the avatar photo
            frames = np.stack([_resize(f, res) for f in frames])
        masks = hidden = None
        if self.audio:
            masks = wire_masks(seq, self.mask_mode)
            # whole-clip wav2vec2 at its own length (ceil(n/640) rows), then the clip's frames
            hidden = w2v.hidden_states(self.models.wav2vec, audio)[:t]  # (T, layers, C)
        cond = ClipConditions(frames, render_pose_sequence(seq), masks, hidden)
        self._cache[index] = cond
        if len(self._cache) > self.cache_clips:
            self._cache.popitem(last=False)
        return cond

    def batch(self, generator: torch.Generator, size: int) -> Stage2Batch:
        """``size`` random windows (clip ∝ its window count, start, reference frame)."""
        f = self.frames
        weights = torch.tensor([n - f + 1 for n in self.lengths], dtype=torch.float64)
        picks = torch.multinomial(weights, size, replacement=True, generator=generator)
        items = []
        for i in picks.tolist():
            c, n = self.conditions(i), self.lengths[i]
            if f == 1 and self.reference == "random":  # the official image-level loader
                ref, start = reference_and_target(n, generator)
            elif self.audio:  # the official video-level loader
                start, ref = video_window(n, f, generator)
            else:
                start = int(torch.randint(0, n - f + 1, (), generator=generator))
                ref = int(torch.randint(0, n, (), generator=generator))
            items.append((c, start, start if self.reference == "first" else ref))
        radius = self.models.net.audioproj.config.window // 2
        windows = masks = None
        if self.audio:
            masks = _concat_masks([c.masks.frames(list(range(s, s + f))) for c, s, _ in items])
            win = [c.hidden[w2v.window_index(len(c.hidden), radius)[s : s + f]]
                   for c, s, _ in items]  # fmt: skip
            windows = torch.from_numpy(np.stack(win))  # (B, F, 5, layers, C)
        targets = [(c.frames[s : s + f], c.pose[s : s + f], c.frames[r]) for c, s, r in items]
        if self.augment:  # one crop for target, pose and reference (not the CLIP input)
            for k, parts in enumerate(targets):
                box = crop_box(self.resolution, generator)
                targets[k] = tuple(_cropped(a, box) for a in parts)
        pose = [torch.from_numpy(p).permute(3, 0, 1, 2) for _, p, _ in targets]
        return Stage2Batch(
            frames=torch.stack([_pixels(fr) for fr, _, _ in targets]),
            reference=_pixels(np.stack([ref for _, _, ref in targets])),
            reference_images=[c.frames[r] for c, _, r in items],
            pose=torch.stack(pose).float() / 255,  # (B, 3, F, R, R)
            masks=masks,
            windows=windows,
        )


def _cropped(images: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """One image (R, R, 3) or a stack (F, R, R, 3), cropped by ``box`` and resized back."""
    if images.ndim == 3:
        return apply_crop(images, box)
    return np.stack([apply_crop(x, box) for x in images])


def _concat_masks(parts: list[BranchMasks]) -> BranchMasks:
    """Rows of several samples' masks, sample-major (the UNet's B·F folding)."""
    cat = lambda levels: tuple(torch.cat(ms) for ms in zip(*levels, strict=True))  # noqa: E731
    return BranchMasks(
        cat([m.full for m in parts]), cat([m.face for m in parts]), cat([m.lip for m in parts])
    )
