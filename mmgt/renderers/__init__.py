"""Renderers: reference image + keypoint frames (+ masks, audio) → RGB frames."""

from __future__ import annotations

from mmgt.errors import InputError
from mmgt.renderers.warp import WarpConfig, WarpRenderer
from mmgt.types import Renderer

RENDERERS = ("warp", "diffusion")


def make_renderer(name: str, **options: object) -> Renderer:
    """Build a renderer by name (see :data:`RENDERERS`).

    ``diffusion`` options: ``weights_dir`` (official stage-2 files) or ``preset="tiny"`` (random
    tiny models: a pipeline check whose video is noise), ``device``, ``dtype``, ``steps``,
    ``guidance``, ``mask_mode``, ``seed``, ``live`` (few-step live defaults), ``backend``
    (:class:`mmgt.backend.Backend`: torch, ONNX Runtime or TensorRT for its networks),
    ``vocal_separator`` (a Kim_Vocal_2 ONNX path, ``"auto"``: the weights folder's, or None:
    none; offline clips only, :mod:`mmgt.audio.separation`).
    """
    if name == "warp":
        if options:
            raise InputError(f"the warp renderer takes no options ({', '.join(options)})")
        return WarpRenderer()
    if name == "diffusion":
        return _diffusion(**options)
    raise ValueError(f"unknown renderer {name!r}; choose one of {', '.join(RENDERERS)}")


def add_diffusion_arguments(group, *, live: bool) -> None:  # noqa: ANN001 - argparse group
    """The diffusion renderer's flags, shared by ``mmgt render`` and ``python -m server``."""
    group.add_argument(
        "--stage2-preset",
        choices=("tiny",),
        help="random tiny stage-2 models instead of --weights-dir (a pipeline check; noise)",
    )
    default_steps = "live default 2" if live else "official 30"
    default_cfg = "live default off" if live else "official 3.5"
    group.add_argument("--render-steps", type=int, help=f"diffusion DDIM steps ({default_steps})")
    group.add_argument("--render-guidance", type=float, help=f"diffusion CFG ({default_cfg})")
    group.add_argument("--mask-mode", choices=("official", "paper"), default="official",
                       help="MM-HAA mask wiring (docs/models.md)")  # fmt: skip
    if not live:  # separation needs whole seconds of audio at once: offline only
        group.add_argument(
            "--no-vocal-separation",
            action="store_true",
            help="skip the official vocal separation before wav2vec2 "
            "(done when WEIGHTS/audio_separator/Kim_Vocal_2.onnx is there)",
        )
    group.add_argument("--device", default="cpu", help="diffusion renderer device: cpu or cuda:N")
    group.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32", help="precision")


def diffusion_options(args: object, *, live: bool) -> dict:
    """``make_renderer("diffusion", …)`` options from the shared command-line flags."""
    return {
        "weights_dir": None if args.stage2_preset else args.weights_dir,
        "preset": args.stage2_preset,
        "device": args.device,
        "dtype": args.dtype,
        "steps": args.render_steps,
        "guidance": args.render_guidance,
        "mask_mode": args.mask_mode,
        "seed": getattr(args, "seed", 42),
        "live": live,
        "vocal_separator": None if live or args.no_vocal_separation else "auto",
    }


def _diffusion(
    weights_dir=None,
    preset=None,
    device="cpu",
    dtype="fp32",
    steps=None,
    guidance=None,
    mask_mode="official",
    seed=42,
    live=False,
    backend=None,
    vocal_separator=None,
) -> Renderer:  # noqa: ANN001
    from dataclasses import replace

    from mmgt.audio.separation import VocalSeparator, find_separator
    from mmgt.models.mmhaa import MASK_MODES
    from mmgt.renderers.diffusion import DiffusionRenderer, DiffusionSettings
    from mmgt.runtime import check_device
    from mmgt.weights.stage2_models import Stage2Models

    if (weights_dir is None) == (preset is None):
        raise InputError(
            "the diffusion renderer needs --weights-dir (official stage-2 weights, see "
            "docs/weights.md) or --stage2-preset tiny (random tiny models, a pipeline check)"
        )
    if mask_mode not in MASK_MODES:
        raise InputError(f"--mask-mode must be one of {', '.join(MASK_MODES)}")
    check_device(str(device))
    if dtype == "fp16" and str(device) == "cpu":
        raise InputError("--dtype fp16 needs a CUDA device (--device cuda:0)")
    if weights_dir is not None:
        models = Stage2Models.from_folder(weights_dir, device=device, dtype=dtype)
    else:
        models = Stage2Models.random(preset).to(device, dtype)  # the same models at any --seed
    settings = DiffusionSettings.live() if live else DiffusionSettings()
    settings = replace(settings, mask_mode=mask_mode, seed=seed)
    if steps is not None:
        settings = replace(settings, steps=steps)
    if guidance is not None:
        settings = replace(settings, guidance=guidance)
    if vocal_separator == "auto":  # the official file, when the weights folder has it
        vocal_separator = find_separator(weights_dir) if weights_dir is not None else None
    separator = VocalSeparator(vocal_separator, device=device) if vocal_separator else None
    return DiffusionRenderer(models, settings, backend, separator=separator)


__all__ = [
    "RENDERERS",
    "WarpConfig",
    "WarpRenderer",
    "add_diffusion_arguments",
    "diffusion_options",
    "make_renderer",
]
