"""The ``mmgt`` command line (see the README's command table).

Subcommands: ``render`` (photo + speech → mp4), ``prepare-avatar`` (photo → framed image and
reference pose), ``doctor`` (versions, threads, devices), ``data`` (training corpus), ``train``
and ``eval`` (SMGA), ``check-weights`` (key and shape diff of an official weights folder).
Errors caused by the input are printed as one line, with exit code 2; nothing partial is left
on disk.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is ever fetched at run time
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mmgt import __version__  # noqa: E402
from mmgt.errors import InputError, MissingDependencyError  # noqa: E402
from mmgt.signals import exit_code, interrupted, sigterm_as_interrupt  # noqa: E402

log = logging.getLogger("mmgt")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size", type=int, default=512, help="output frame side in pixels (multiple of 64)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for OpenCV (default: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for reproducible motion")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    from mmgt.backend import add_backend_arguments
    from mmgt.drivers import DRIVERS
    from mmgt.drivers.controls import add_motion_arguments
    from mmgt.keypoints.extractor import add_pose_model_arguments
    from mmgt.renderers import RENDERERS, add_diffusion_arguments

    parser = argparse.ArgumentParser(
        prog="mmgt",
        description="a photo and speech to a talking, gesturing video (MMGT); see the README.",
    )
    parser.add_argument("--version", action="version", version=f"mmgt {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a photo speaking an audio file into an mp4")
    r.add_argument(
        "--image",
        type=Path,
        help="reference photo, or a folder made by prepare-avatar (default: the bundled avatar)",
    )
    r.add_argument(
        "--audio",
        type=Path,
        help="speech audio: wav/mp3/flac/ogg, any rate (default: the bundled speech sample)",
    )
    r.add_argument("--out", type=Path, default=Path("out/avatar.mp4"), help="output .mp4")
    r.add_argument(
        "--driver",
        choices=DRIVERS,
        default="auto",
        help="audio → motion (auto: the shipped SMGA model if present, else procedural)",
    )
    r.add_argument("--renderer", choices=RENDERERS, default="warp", help="motion → frames")
    r.add_argument(
        "--weights-dir",
        type=Path,
        help="official weights folder (docs/weights.md): stage_1/ and wavlm/ for --driver smga, "
        "stage_2/ and the base models for --renderer diffusion",
    )
    add_pose_model_arguments(r)
    add_backend_arguments(r)
    g = r.add_argument_group("SMGA driver (--driver smga)")
    g.add_argument(
        "--smga-weights",
        type=Path,
        help="our .safetensors or an official checkpoint (default: the shipped CPU model)",
    )
    g.add_argument(
        "--wavlm", type=Path, help="WavLM for official checkpoints: transformers folder or .pt"
    )
    g.add_argument("--steps", type=int, help="DDIM steps (official 50; CPU default 4)")
    g.add_argument("--guidance", type=float, help="classifier-free guidance weight (official 2)")
    g.add_argument("--eta", type=float, help="DDIM eta (official 1)")
    g.add_argument("--context", type=int, help="frames each window continues from")
    g.add_argument("--smga-heads", type=int, default=8, help="heads of an official checkpoint")
    g.add_argument(
        "--no-speech-gate",
        action="store_true",
        help="feed the model noise as it is (the gate makes noise without speech silence)",
    )
    add_diffusion_arguments(r.add_argument_group("diffusion renderer (--renderer diffusion)"),
                            live=False)  # fmt: skip
    pose = r.add_argument_group(
        "pose-driven mode (--renderer diffusion; the official pose2vid)",
        "Render given pose and mask videos (e.g. the --debug outputs OUT.pose.mp4, OUT.face.mp4, "
        "OUT.lips.mp4) instead of driving poses from speech. --audio is optional here: without "
        "it the audio tokens are zeros, as in the official pose2vid.",
    )
    pose.add_argument("--pose-video", type=Path, help="pose images (official colours)")
    pose.add_argument("--face-mask-video", type=Path, help="face (+ hands) box masks")
    pose.add_argument("--lips-mask-video", type=Path, help="lips box masks")
    add_motion_arguments(r)
    r.add_argument(
        "--debug",
        action="store_true",
        help="also write <out>.pose.mp4, .face.mp4, .lips.mp4, .masks.mp4 and .side.mp4",
    )
    _add_common(r)

    a = sub.add_parser("prepare-avatar", help="frame a photo and extract its reference pose")
    a.add_argument("--image", type=Path, help="reference photo (default: the bundled avatar)")
    a.add_argument("--out", type=Path, required=True, help="output folder")
    add_pose_model_arguments(a, weights_dir=True)
    _add_common(a)

    sub.add_parser("doctor", help="print versions, threads and devices")

    from mmgt.train import cli as train_cli
    from mmgt.train.corpus import cli as corpus_cli
    from mmgt.weights import cli as weights_cli

    corpus_cli.add_cli(sub)
    train_cli.add_cli(sub)
    weights_cli.add_cli(sub)
    return parser


# Command → (module, function), imported when that command runs: the modules behind the
# commands import torch, diffusers or scipy (seconds), and each command needs only its own.
COMMANDS = {
    "render": ("mmgt.cli", "_cmd_render"),
    "prepare-avatar": ("mmgt.cli", "_cmd_prepare_avatar"),
    "doctor": ("mmgt.cli", "_cmd_doctor"),
    "data": ("mmgt.train.corpus.cli", "run_cli"),
    "train": ("mmgt.train.cli", "run_train"),
    "eval": ("mmgt.train.cli", "run_eval"),
    "check-weights": ("mmgt.weights.cli", "run_cli"),
}


def _set_threads(n: int | None) -> None:
    import cv2

    if n is not None:
        if n < 1:
            raise InputError("--threads must be at least 1")
        cv2.setNumThreads(n)


def _print_notes(command: str, notes: tuple[str, ...]) -> None:
    for note in notes:
        print(f"mmgt {command}: note: {note}", file=sys.stderr)


def _cmd_render(args: argparse.Namespace) -> int:
    from mmgt.avatar import BUNDLED_AVATAR, load_avatar
    from mmgt.backend import backend_from_args
    from mmgt.drivers import default_driver_name
    from mmgt.drivers.controls import controls_from_args
    from mmgt.keypoints.extractor import extractor_from_args
    from mmgt.offline import check_output, render_video

    try:
        motion = controls_from_args(args)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.pose_video or args.face_mask_video or args.lips_mask_video:
        if not motion.neutral:
            raise InputError(
                "the motion controls (--head-motion, --gestures, --mouth, --blinks) scale a "
                "driver's motion; not with --pose-video"
            )
        return _cmd_render_poses(args)

    audio = args.audio or Path(__file__).resolve().parent / "assets" / "speech_sample.wav"
    weights, wavlm = args.smga_weights, args.wavlm
    if args.weights_dir is not None and args.driver == "smga":
        weights = weights or _find_smga(args.weights_dir / "stage_1")
        wavlm = wavlm or _find_wavlm(args.weights_dir / "wavlm")
    options = {
        "weights": weights,
        "steps": args.steps,
        "guidance": args.guidance,
        "eta": args.eta,
        "context": args.context,
        "heads": args.smga_heads,
        "speech_gate": False if args.no_speech_gate else None,
    }
    if args.driver != "smga" and any(v is not None for k, v in options.items() if k != "heads"):
        raise InputError("SMGA options (--smga-weights, --steps, …) need --driver smga")
    driver = default_driver_name() if args.driver == "auto" else args.driver
    backend = backend_from_args(args, driver=driver, renderer=args.renderer)
    options["backend"] = backend
    renderer_options = None
    if args.renderer == "diffusion":
        from mmgt.renderers import diffusion_options

        renderer_options = diffusion_options(args, live=False) | {"backend": backend}
    elif args.stage2_preset or args.render_steps is not None or args.render_guidance is not None:
        raise InputError("diffusion options (--stage2-preset, --render-steps, …) need "
                         "--renderer diffusion")  # fmt: skip
    official = args.weights_dir is not None and (driver == "smga" or args.renderer == "diffusion")
    with extractor_from_args(args, official_models=official) as extractor:
        check_output(args.out)
        avatar = load_avatar(args.image, frame_size=args.size, extractor=extractor)
        _print_notes("render", avatar.notes)  # before the work, so the user can stop it
        result = render_video(
            audio,
            args.out,
            avatar=avatar,
            size=args.size,
            driver=args.driver,
            renderer=args.renderer,
            seed=args.seed,
            debug=args.debug,
            progress=not args.quiet,
            driver_options=options if driver == "smga" else None,
            wavlm=wavlm,
            renderer_options=renderer_options,
            motion=motion,
        )
    work = result.work_s
    rt = result.duration_s / work if work else float("inf")
    log.info("timings (s): %s", json.dumps({k: round(v, 3) for k, v in result.timings.items()}))
    print(
        f"{result.frames} frames ({result.duration_s:.1f} s of audio) of "
        f"{args.image or BUNDLED_AVATAR.name}, driven by {result.driver}, "
        f"made at {rt:.1f}× real time (after set-up)",
        file=sys.stderr,
    )
    for p in result.debug_paths:
        print(f"debug: {p}", file=sys.stderr)
    print(result.path)
    return 0


def _cmd_render_poses(args: argparse.Namespace) -> int:
    """``render --pose-video … --face-mask-video … --lips-mask-video …`` (pose2vid)."""
    from mmgt.backend import backend_from_args
    from mmgt.offline import render_pose_video
    from mmgt.renderers import diffusion_options

    videos = (args.pose_video, args.face_mask_video, args.lips_mask_video)
    if None in videos:
        raise InputError("the pose-driven mode needs --pose-video, --face-mask-video and "
                         "--lips-mask-video")  # fmt: skip
    if args.renderer != "diffusion":
        raise InputError("the pose-driven mode renders with --renderer diffusion")
    for path in videos:
        if not path.is_file():
            raise InputError(f"video not found: {path}")
    backend = backend_from_args(args, driver="none", renderer="diffusion")
    result = render_pose_video(
        *videos,
        args.out,
        image=args.image,
        audio=args.audio,
        size=args.size,
        renderer_options=diffusion_options(args, live=False) | {"backend": backend},
        progress=not args.quiet,
    )
    _print_notes("render", result.notes)
    print(f"{result.frames} frames rendered from {args.pose_video.name}", file=sys.stderr)
    print(result.path)
    return 0


def _find_smga(folder: Path) -> Path:
    """The official SMGA checkpoint: its converted safetensors if present, else the ``.pt``."""
    converted = folder / "audio2pose_best_model.safetensors"
    return converted if converted.is_file() else folder / "audio2pose_best_model.pt"


def _find_wavlm(folder: Path) -> Path | None:
    """The WavLM inside an official weights folder: a transformers folder or WavLM-Large.pt."""
    if (folder / "config.json").is_file():
        return folder
    pt = folder / "WavLM-Large.pt"
    return pt if pt.is_file() else None


def _cmd_prepare_avatar(args: argparse.Namespace) -> int:
    from mmgt.avatar import BUNDLED_AVATAR, load_avatar
    from mmgt.avatar_folder import folder_meta, write_avatar_folder
    from mmgt.keypoints.extractor import extractor_from_args

    if args.out.exists() and not args.out.is_dir():
        raise InputError(f"--out {args.out} is a file; give a folder for the avatar's files")
    with extractor_from_args(args, official_models=args.weights_dir is not None) as extractor:
        avatar = load_avatar(args.image, frame_size=args.size, extractor=extractor)
        pose_model = "mediapipe" if extractor.dwpose is None else "dwpose"
    source = args.image.name if args.image is not None else f"{BUNDLED_AVATAR.name} (bundled)"
    if args.image is not None and args.image.is_dir():  # a prepared avatar, resized: its pose
        meta = folder_meta(args.image)
        pose_model, source = meta.get("pose_model", ""), meta.get("source", source)
    _print_notes("prepare-avatar", avatar.notes)
    print(write_avatar_folder(avatar, args.out, source=source, pose_model=pose_model))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    import importlib

    import cv2

    info: dict[str, object] = {
        "mmgt": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
        "opencv_threads": cv2.getNumThreads(),
    }
    for name in ("numpy", "cv2", "av", "soxr", "torch", "onnxruntime", "mediapipe"):
        try:
            mod = importlib.import_module(name)
            info[name] = getattr(mod, "__version__", "installed")
        except ImportError:
            info[name] = "missing"
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:  # optional: the [gpu] extra, for python -m export.trt and --backend tensorrt
        info["tensorrt"] = importlib.import_module("tensorrt").__version__
    except (ImportError, OSError):
        info["tensorrt"] = "not installed (optional: pip install 'mmgt[gpu]' with an NVIDIA GPU)"
    # The live server's thread budget (engine.engine.EngineConfig defaults).
    info["live_worker_threads"] = os.cpu_count()
    info["live_intra_op_threads"] = "1 per session (torch and ONNX Runtime); OpenCV 1; BLAS 1"
    from threadpoolctl import threadpool_info

    blas = [f"{p['internal_api']} {p.get('version') or ''} ({p['num_threads']} threads)".strip()
            for p in threadpool_info() if p["user_api"] == "blas"]  # fmt: skip
    info["blas"] = "; ".join(blas) + " (render and the live engine use 1)" if blas else "none"
    width = max(len(k) for k in info)
    for k, v in info.items():
        print(f"{k:<{width}}  {v}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mmgt`` console script."""
    try:
        args = _build_parser().parse_args(argv)
    except KeyboardInterrupt:
        print("mmgt: interrupted", file=sys.stderr)
        return 130
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        with sigterm_as_interrupt():  # a stopped render leaves no temporary file either
            # Imported here, not above: importing takes seconds, and a Ctrl+C meanwhile is
            # an interruption like any other, not a traceback.
            import importlib

            import torch

            module, function = COMMANDS[args.command]
            command = getattr(importlib.import_module(module), function)
            torch.set_flush_denormal(True)  # denormal floats make CPU inference much slower
            if hasattr(args, "threads"):
                _set_threads(args.threads)
            if hasattr(args, "size"):
                from mmgt.types import check_frame_size

                check_frame_size(args.size, flag="--size")
            return command(args)
    except (InputError, MissingDependencyError) as exc:
        print(f"mmgt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"mmgt {args.command}: {interrupted(exc)}", file=sys.stderr)
        return exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
