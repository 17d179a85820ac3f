"""Offline rendering: a photo and a speech file → an mp4 of the person speaking it.

The steps, in order: prepare the avatar, decode the audio, compute the light features, drive
keypoints, render frames, encode H.264 with the input audio as AAC. With ``debug`` it also
writes the pose video, the face(+hands) and lips mask videos in the official format, the
motion-mask overlay and a side-by-side (photo | pose | result).

:func:`render_pose_video` is the pose-driven mode of the diffusion renderer (the official
``pose2vid``): given pose and mask videos (such as the debug ones) instead of speech.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
from PIL import Image
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from mmgt.audio import KIND as LIGHT_KIND
from mmgt.audio import extract_light_features, load_audio_native
from mmgt.audio.gate import gate_features
from mmgt.avatar import load_avatar
from mmgt.drivers import make_driver
from mmgt.drivers.controls import MotionControls, apply_motion_controls
from mmgt.errors import InputError
from mmgt.keypoints.extractor import ReferencePoseExtractor
from mmgt.keypoints.render import render_pose
from mmgt.mask_filters import mask_pyramid
from mmgt.masks import MotionMaskStream, blur_kernel, mask_overlay
from mmgt.renderers import make_renderer
from mmgt.types import AudioFeatures, Avatar, Driver, KeypointSeq, MaskSet
from mmgt.video import AUDIO_RATE, Mp4Writer, video_frames, video_rate

log = logging.getLogger(__name__)


@dataclass
class RenderResult:
    """What :func:`render_video` produced and how long each part took (seconds)."""

    path: Path
    frames: int
    duration_s: float
    debug_paths: list[Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    driver: str = ""  # the motion driver that made the poses (e.g. "smga-small", "procedural")
    notes: tuple[str, ...] = ()  # the avatar's notes about its photo (Avatar.notes)

    @property
    def work_s(self) -> float:
        """Seconds of the work that grows with the clip (set-up excluded): decoding the
        audio, generating the motion, rendering and encoding."""
        return sum(self.timings.get(k, 0.0) for k in PER_CLIP_TIMINGS)


DEBUG_VIDEOS = ("pose", "face", "lips", "masks", "side")
PER_CLIP_TIMINGS = ("audio", "driver", "render_encode")  # the rest is set-up


def check_output(out: str | os.PathLike[str]) -> Path:
    """``out`` as a Path, once it is known that an .mp4 can be written there (its folder is
    made if missing): checked before any work, so a bad path costs no render."""
    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise InputError(f"the output must be an .mp4 file, got {out.name!r}")
    if out.is_dir():
        raise InputError(f"the output {out} is a folder; give a file name ending in .mp4")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe = out.with_name(f".{out.stem}.{os.getpid()}.probe")
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as exc:
        file = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        reason = f"{file} is a file, not a folder" if file else exc.strerror or type(exc).__name__
        raise InputError(f"cannot write the output {out}: {reason}") from None
    return out


def _debug_paths(out: Path) -> dict[str, Path]:
    return {k: out.with_name(f"{out.stem}.{k}.mp4") for k in DEBUG_VIDEOS}


def render_video(
    audio: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    avatar: Avatar | None = None,
    size: int = 512,
    driver: str = "auto",
    renderer: str = "warp",
    seed: int = 0,
    debug: bool = False,
    progress: bool = True,
    driver_options: dict | None = None,
    wavlm: str | os.PathLike[str] | None = None,
    renderer_options: dict | None = None,
    extractor: ReferencePoseExtractor | None = None,
    motion: MotionControls | None = None,
) -> RenderResult:
    """Render ``audio`` spoken by the photo ``image`` (or the bundled avatar) into ``out``.

    ``driver_options`` go to :func:`mmgt.drivers.make_driver` (e.g. ``weights``, ``steps``);
    ``wavlm`` is the WavLM model (folder or ``WavLM-Large.pt``) that official SMGA checkpoints
    need for their features; ``renderer_options`` go to :func:`mmgt.renderers.make_renderer`
    (e.g. the diffusion renderer's ``weights_dir``); ``extractor`` finds the photo's reference
    pose (default: MediaPipe; :func:`mmgt.keypoints.extractor.make_extractor`); ``motion``
    scales the driver's head, gesture, mouth and blink motion (:mod:`mmgt.drivers.controls`). Raises
    :class:`~mmgt.errors.InputError` subclasses for bad photos, audio or weights; no output file
    (nor debug file) is left behind when anything fails.
    """
    out = check_output(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if avatar is None:
        avatar = load_avatar(image, frame_size=size, extractor=extractor)
    elif avatar.frame_size != size:
        raise ValueError(f"avatar frame size {avatar.frame_size} != requested size {size}")
    timings["avatar"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    drv = make_driver(driver, seed=seed, **(driver_options or {}))
    timings["driver_setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    native, native_rate = load_audio_native(audio)
    speech = _resample(native, native_rate, 16000)
    features = _features(drv.feature_kind, speech, native, native_rate, wavlm)
    if getattr(drv, "speech_gate", False):
        features = gate_features(features)
    mux_audio = _resample(native, native_rate, AUDIO_RATE)
    timings["audio"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    poses = _generate_motion(drv, features, avatar.reference_pose, size, progress)
    if motion is not None and not motion.neutral:
        points = apply_motion_controls(poses.points, avatar.reference_pose, motion)
        poses = dataclasses.replace(poses, points=points)
    timings["driver"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rnd = make_renderer(renderer, **(renderer_options or {}))
    state = rnd.prepare(avatar)
    stream = rnd.open_stream(state)
    whole_clip = getattr(rnd, "render_clip", None)  # window renderers render the clip at once
    timings["prepare"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    debug_out = _debug_paths(out) if debug else {}
    with ExitStack() as stack:
        # NumPy's BLAS threads spin between the warp's small matrix products and burn a core
        # the encoder thread needs (the warp's CPU time doubles): one BLAS thread here.
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        writer = stack.enter_context(Mp4Writer(out, size, audio=mux_audio))
        extra = {
            k: stack.enter_context(Mp4Writer(p, _debug_size(k, size), audio=mux_audio))
            for k, p in debug_out.items()
        }
        masks = MotionMaskStream(size, keep_raw=True) if debug else None
        bar = stack.enter_context(
            tqdm(total=len(poses), unit="frame", disable=not progress, desc="render")
        )
        if whole_clip is not None:
            if hasattr(rnd, "clip_speech"):  # e.g. the official vocal separation
                speech = rnd.clip_speech(native, native_rate, speech)
            frames = iter(whole_clip(state, poses, speech))
        else:
            p0 = poses.start_frame
            frames = (stream.push(poses.frames(p0 + i, p0 + i + 1))[0] for i in range(len(poses)))
        for i, frame in enumerate(frames):
            writer.write(frame)
            if debug:
                pose_img = render_pose(poses.points[i], size)
                extra["pose"].write(pose_img)
                mask_set = masks.push(poses.points[i], i)
                for kind, name in (("face", "face_hands"), ("lips", "lips")):
                    extra[kind].write(np.repeat(mask_set.raw[name][..., None], 3, axis=2))
                extra["masks"].write(mask_overlay(frame, mask_set))
                extra["side"].write(np.concatenate([avatar.image, pose_img, frame], axis=1))
            bar.update(1)
        stream.close()
    timings["render_encode"] = time.perf_counter() - t0
    return RenderResult(
        path=out,
        frames=len(poses),
        duration_s=len(speech) / 16000,
        debug_paths=list(debug_out.values()),
        timings=timings,
        driver=drv.name,
        notes=avatar.notes,
    )


def _generate_motion(
    drv: Driver, features: AudioFeatures, reference: np.ndarray, size: int, progress: bool
) -> KeypointSeq:
    """The driver's keypoints, with a progress bar if it reports progress (a learned model
    takes seconds per minute of audio)."""
    if not progress or not hasattr(drv, "on_progress"):
        return drv.generate(features, reference, frame_size=size)
    with tqdm(total=len(features), unit="frame", desc="motion") as bar:
        drv.on_progress = lambda done, _total: bar.update(done - bar.n)
        try:
            return drv.generate(features, reference, frame_size=size)
        finally:
            drv.on_progress = None


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    out = soxr.resample(samples, rate, target, quality="HQ")
    return np.clip(out, -1.0, 1.0).astype(np.float32, copy=False)


def _features(
    kind: str,
    speech: np.ndarray,
    native: np.ndarray,
    native_rate: int,
    wavlm: str | os.PathLike[str] | None,
) -> AudioFeatures:
    """The features a driver consumes: light (streaming) or the official WavLM ‖ EDGE."""
    if kind == LIGHT_KIND:
        return extract_light_features(speech)
    if kind == "official-wavlm-edge":
        if wavlm is None:
            raise InputError(
                "this SMGA model needs WavLM features: pass --wavlm (a transformers WavLM folder "
                "or WavLM-Large.pt)"
            )
        from mmgt.audio.official import stage1_features
        from mmgt.weights.wavlm import load_wavlm

        return stage1_features(
            speech, load_wavlm(wavlm), original=native, original_rate=native_rate
        )
    raise InputError(f"no feature extractor for {kind!r}")


def _debug_size(kind: str, size: int) -> int | tuple[int, int]:
    return (3 * size, size) if kind == "side" else size


MAX_POSE_FRAMES = 1500  # 60 s at 25 fps: the whole clip's conditions are held at once


def render_pose_video(
    pose_video: str | os.PathLike[str],
    face_mask_video: str | os.PathLike[str],
    lips_mask_video: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    image: str | os.PathLike[str] | None = None,
    audio: str | os.PathLike[str] | None = None,
    size: int = 512,
    renderer_options: dict | None = None,
    progress: bool = True,
) -> RenderResult:
    """Pose-driven mode of the diffusion renderer (the official ``pose2vid``).

    ``pose_video`` holds pose images (official colours, as ``render --debug`` writes them),
    the mask videos white boxes on black: face (+ hands) and lips. Frames are resized to the
    model resolution; masks get the official blur and pyramid. Without ``audio`` the audio
    tokens are zeros (official pose2vid) and the output keeps the pose video's frame rate;
    with ``audio`` (a 25 fps pose video) the speech conditions MM-HAA too and is muxed in.
    The clip is as long as the shortest input. Nothing partial is left behind on failure.
    """
    out = check_output(out)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    avatar = load_avatar(image, frame_size=size)
    rnd = make_renderer("diffusion", **(renderer_options or {}))
    res = rnd.models.resolution
    rate = video_rate(pose_video)
    speech = mux_audio = None
    if audio is not None:
        if abs(rate - 25) > 0.01:
            raise InputError(f"{pose_video} runs at {rate:g} fps; with --audio the pose video "
                             "must be 25 fps (the audio features' rate)")  # fmt: skip
        native, native_rate = load_audio_native(audio)
        speech = _resample(native, native_rate, 16000)
        mux_audio = _resample(native, native_rate, AUDIO_RATE)
    pose = _read_video(pose_video, res, Image.BILINEAR)
    face, lips = (_read_video(p, res, Image.NEAREST, gray=True)
                  for p in (face_mask_video, lips_mask_video))  # fmt: skip
    lengths = {"pose": len(pose), "face mask": len(face), "lips mask": len(lips)}
    if speech is not None:
        lengths["audio"] = -(-speech.size // 640)
    n = min(lengths.values())
    summary = ", ".join(f"{k} {v}" for k, v in lengths.items())
    if n == 0:
        raise InputError(f"an input has no frames ({summary})")
    if len(set(lengths.values())) > 1:  # the official pose2vid cuts to the shortest too
        log.warning("the inputs differ in length (%s frames); the video has the shortest, %d",
                    summary, n)  # fmt: skip
    if speech is not None:
        speech = speech[: n * 640]
    kernels = {name: blur_kernel(name, res) for name in ("face_hands", "lips")}
    masks = [
        MaskSet(
            i,
            pyramid={
                "face_hands": mask_pyramid(face[i], kernels["face_hands"]),
                "lips": mask_pyramid(lips[i], kernels["lips"]),
            },
        )  # fmt: skip
        for i in range(n)
    ]
    state = rnd.prepare(avatar)
    timings["prepare"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if speech is not None:
        speech = rnd.clip_speech(native, native_rate, speech)
    frames = rnd.render_pose_clip(state, pose[:n], masks, speech)
    with Mp4Writer(out, size, fps=round(rate), audio=mux_audio) as writer:
        for frame in tqdm(frames, unit="frame", disable=not progress, desc="encode"):
            writer.write(frame)
    timings["render_encode"] = time.perf_counter() - t0
    return RenderResult(path=out, frames=n, duration_s=n / rate, timings=timings,
                        notes=avatar.notes)  # fmt: skip


def _read_video(
    path: str | os.PathLike[str], side: int, resample: int, *, gray: bool = False
) -> np.ndarray:
    """(F, side, side, 3) RGB or (F, side, side) grey uint8 frames of a video (≤ the cap)."""
    frames = []
    for _, rgb in video_frames(path):
        if len(frames) == MAX_POSE_FRAMES:
            raise InputError(f"{path} is longer than {MAX_POSE_FRAMES} frames; split it")
        img = Image.fromarray(rgb).convert("L") if gray else Image.fromarray(rgb)
        if img.size != (side, side):
            img = img.resize((side, side), resample)
        frames.append(np.asarray(img))
    if not frames:
        raise InputError(f"{path} contains no video frames")
    return np.stack(frames)
