"""``mmgt train`` and ``mmgt eval``: SMGA and stage-2 training, and driver evaluation.

mmgt train --corpus DIR --out DIR [--preset small] [--steps N] [--minutes M] [--resume]
mmgt train --stage 2 --process 1|2 --clips DIR --out DIR (--stage2-preset tiny | --weights-dir W)
           [--from-base] [--generate N] [--add-video FILE] [--init DIR] [--frames 12] [--steps N] …
mmgt eval --corpus DIR [--split test] [--weights FILE] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from mmgt.audio import extract_light_features
from mmgt.drivers.pose_space import ANCHORS
from mmgt.errors import InputError
from mmgt.keypoints.extractor import add_pose_model_arguments, extractor_from_args

log = logging.getLogger(__name__)
REAL_SPEECH = Path(__file__).resolve().parent / "data" / "real_speech"
REAL_TEXTS = {
    "arctic_a0007": "And you always want to see it in the superlative degree",
    "arctic_a0009": "He turned sharply, and faced Gregson across the table",
}


def add_cli(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train SMGA on a corpus (docs/corpus.md) or stage 2 on clips "
        "(--stage 2, docs/training_stage2.md)",
    )
    t.add_argument("--stage", type=int, choices=(1, 2), default=1, help="1: SMGA, 2: video")
    t.add_argument("--corpus", type=Path, help="corpus folder (stage 1, required)")
    t.add_argument("--out", type=Path, required=True, help="output folder (checkpoints)")
    t.add_argument("--preset", default="small", help="SMGA preset (small, tiny, official)")
    t.add_argument("--steps", type=int, help="default: 20000 (stage 1), official (stage 2)")
    t.add_argument("--batch", type=int, help="default: 64 (stage 1), official (stage 2)")
    t.add_argument("--lr", type=float, help="default: 2e-4 (stage 1), 1e-5 (stage 2)")
    t.add_argument("--minutes", type=float, help="wall-time budget; resume later with --resume")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--device", default="cpu", help="cpu or cuda:N")
    t.add_argument("--mixed-precision", action="store_true", help="autocast on CUDA")
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--no-augment", action="store_true", help="train on clean audio only")
    t.add_argument(
        "--residual-anchor",
        choices=ANCHORS,
        default="reference",
        help="stage 1: motion measured from the reference pose, or from it with the mouth "
        "closed (no closed-mouth bias; docs/models.md)",
    )
    t.add_argument(
        "--motion-weights",
        type=_three_weights,
        default=(1.0, 1.0, 1.0),
        metavar="REC,VEL,ACC",
        help="stage 1: weights of the position, velocity and acceleration losses (default 1,1,1 "
        "as in the paper; a larger ACC weighs rough motion more, docs/models.md)",
    )
    t.add_argument(
        "--features",
        choices=("light", "official"),
        default="light",
        help="light (43-d, streaming) or official (WavLM ‖ EDGE, 1059-d; needs --wavlm)",
    )
    t.add_argument("--wavlm", type=Path, help="WavLM (transformers folder or WavLM-Large.pt)")
    t.add_argument("--seed", type=int, default=0)
    _add_stage2(t.add_argument_group("stage 2 (--stage 2, docs/training_stage2.md)"))

    e = sub.add_parser("eval", help="evaluate drivers on a corpus split and on real speech")
    e.add_argument("--corpus", type=Path, required=True, help="corpus folder")
    e.add_argument("--split", default="test", help="split to evaluate (test = unseen voices)")
    e.add_argument("--weights", type=Path, help="SMGA weights (default: the shipped model)")
    e.add_argument("--steps", type=int, help="DDIM steps for SMGA")
    e.add_argument("--max-clips", type=int, default=200)
    e.add_argument(
        "--live-hop",
        type=int,
        help="generate as the live engine does: this many new frames per window",
    )
    e.add_argument("--lookahead", type=int, default=0, help="with --live-hop: future frames")
    e.add_argument("--guidance", type=float, help="classifier-free guidance for SMGA")
    e.add_argument("--join-fade", type=int, help="SMGA: frames each window's join is faded over "
                   "(default 4; 0 = windows continued by the sampler alone)")  # fmt: skip
    e.add_argument("--no-baseline", action="store_true", help="skip the procedural baseline")
    e.add_argument(
        "--no-speech-gate",
        action="store_true",
        help="SMGA on ungated features (render and the server gate them by default)",
    )
    e.add_argument(
        "--no-lip-bias",
        action="store_true",
        help="SMGA without its per-avatar closed-mouth correction (mmgt/drivers/lip_bias.py)",
    )
    e.add_argument("--out", type=Path, help="write the results as JSON")


def _three_weights(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected three weights ≥ 0 like 1,1,4, got {text!r}")
    return values  # type: ignore[return-value]


MASK_MODES = ("official", "paper", "official-train")  # stage2_data.TRAIN_MASK_MODES (no import:
# the parser is built for every command, and the stage-2 modules pull in diffusers)


def _add_stage2(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--process",
        type=int,
        choices=(1, 2),
        help="1: image level (ReferenceNet, UNet, pose guider); "
        "2: video level (motion and audio modules, audio projection)",
    )
    g.add_argument("--clips", type=Path, help="clip folder (<id>.npz; CLIPS/val/ = validation)")
    g.add_argument("--stage2-preset", choices=("tiny",), help="random tiny networks (CPU tests)")
    g.add_argument("--weights-dir", type=Path, help="official weights folder (docs/weights.md)")
    g.add_argument(
        "--from-base",
        action="store_true",
        help="start from the pretrained base models in --weights-dir as the official processes "
        "do (process 1: SD image-variations UNet + ControlNet-openpose; process 2: --init)",
    )
    g.add_argument(
        "--init",
        type=Path,
        help="start from these networks: a process-1 output folder, a net-*.pth, "
        "or a folder holding one",
    )
    g.add_argument(
        "--motion-module",
        type=Path,
        help="AnimateDiff motion modules (mm_sd_v15_v2.ckpt layout), process 2",
    )
    g.add_argument(
        "--generate",
        type=int,
        metavar="N",
        help="first write N synthetic clips (bundled avatar) into --clips",
    )
    g.add_argument(
        "--add-video",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="first cut this talking-person video into clips in --clips",
    )
    add_pose_model_arguments(g)  # the keypoints of --add-video clips
    g.add_argument("--frames", type=int, default=12, help="frames per window (process 2)")
    g.add_argument(
        "--mask-mode",
        choices=MASK_MODES,
        default="official",
        help="MM-HAA mask wiring (official = as inference)",
    )
    g.add_argument(
        "--reference",
        choices=("random", "first"),
        default="random",
        help="reference frame: any frame of the clip, or the window's first",
    )
    g.add_argument(
        "--train-size", type=int, help="frame side (default: the model's; official process 1: 256)"
    )
    g.add_argument(
        "--snr-weighting",
        choices=("official", "diffusers"),
        default="official",
        help="Min-SNR-5 for v-prediction: min(SNR+1, 5)/(SNR+1) as the official scripts, "
        "or min(SNR, 5)/(SNR+1) as current diffusers",
    )
    g.add_argument(
        "--region-weights",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("FULL", "FACE", "LIP"),
        help="MM-HAA branch weights (official training effectively 1 1 1; inference 1 1 2)",
    )
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--eval-samples", type=int, default=8, help="fixed validation windows")
    g.add_argument("--gradient-checkpointing", action="store_true")


def _load_split(root: Path, split: str) -> list[tuple]:
    from mmgt.train.corpus.format import read_corpus

    clips = [c for c in read_corpus(root) if c.split == split]
    if not clips:
        raise InputError(f"{root} has no {split!r} clips")
    return [c.load() for c in clips]


STAGE2_ONLY = (
    "process", "clips", "stage2_preset", "weights_dir", "init", "motion_module", "generate",
    "train_size",
)  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from mmgt.runtime import check_device

    check_device(args.device)
    if args.stage == 2:
        return run_train_stage2(args)
    given = [f"--{k.replace('_', '-')}" for k in STAGE2_ONLY if getattr(args, k) is not None]
    if args.from_base:
        given.append("--from-base")
    if given or args.add_video:
        raise InputError(f"{', '.join(given or ['--add-video'])} need --stage 2")
    if args.corpus is None:
        raise InputError("stage-1 training needs --corpus DIR (or use --stage 2 --clips DIR)")
    args.steps = 20000 if args.steps is None else args.steps
    args.batch = 64 if args.batch is None else args.batch
    args.lr = 2e-4 if args.lr is None else args.lr
    from mmgt.models.smga import preset
    from mmgt.train.corpus.augmentation import augment
    from mmgt.train.smga_train import TrainConfig, WindowSampler, train_smga

    if args.features == "official":
        from mmgt.audio.official import KIND, stage1_features
        from mmgt.weights.wavlm import load_wavlm

        if args.wavlm is None:
            raise InputError("--features official needs --wavlm")
        wavlm = load_wavlm(args.wavlm)
        kind, dim = KIND, wavlm.config.hidden_size + 35

        def feats(audio: np.ndarray) -> np.ndarray:
            return stage1_features(audio, wavlm).values

    else:
        kind, dim = "light-v1", 43

        def feats(audio: np.ndarray) -> np.ndarray:
            return extract_light_features(audio).values

    cfg = preset(args.preset, audio_dim=dim)
    aug = None if args.no_augment else augment
    train_clips = _load_split(args.corpus, "train")
    train = WindowSampler(train_clips, cfg.frames, feats, aug, 0.7, variants=2, seed=args.seed)
    val = WindowSampler(_load_split(args.corpus, "val"), cfg.frames, feats)
    tc = TrainConfig(
        steps=args.steps,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        mixed_precision=args.mixed_precision,
        eval_every=args.eval_every,
        max_minutes=args.minutes,
        residual_anchor=args.residual_anchor,
        motion_weights=args.motion_weights,
    )
    summary = train_smga(cfg, train, val, args.out, tc, resume=args.resume, feature_kind=kind)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    print(args.out / "best.safetensors")
    return 0


def run_train_stage2(args: argparse.Namespace) -> int:
    """``mmgt train --stage 2``: one process of stage-2 training (docs/training_stage2.md)."""
    from mmgt.audio.separation import VocalSeparator, find_separator
    from mmgt.train.stage2_base import base_models
    from mmgt.train.stage2_data import generate_clips, video_to_clips
    from mmgt.train.stage2_parts import Recipe, load_init, load_motion_modules
    from mmgt.train.stage2_train import Stage2TrainConfig, open_clips, train_stage2
    from mmgt.weights.stage2_models import Stage2Models

    if args.corpus is not None:
        raise InputError("--corpus is for stage 1; stage 2 reads --clips DIR")
    if args.process is None or args.clips is None:
        raise InputError("--stage 2 needs --process 1|2 and --clips DIR")
    if (args.stage2_preset is None) == (args.weights_dir is None):
        raise InputError("--stage 2 needs exactly one of --stage2-preset tiny, --weights-dir DIR")
    if args.motion_module is not None and args.process != 2:
        raise InputError("--motion-module initialises process 2")
    if args.frames < 1 or (args.generate is not None and args.generate < 1):
        raise InputError("--frames and --generate must be at least 1")
    if args.from_base and (args.weights_dir is None or (args.process == 2 and not args.init)):
        raise InputError("--from-base needs --weights-dir (and, for process 2, --init with "
                         "the process-1 files)")  # fmt: skip
    if args.stage2_preset:
        models = Stage2Models.random(args.stage2_preset, seed=args.seed)
    elif args.from_base:
        models, notes = base_models(args.weights_dir, args.process)
        for note in notes:
            print(f"base models: {note}", file=sys.stderr)
    else:
        models = Stage2Models.from_folder(args.weights_dir)
    if args.init is not None:
        log.info("initialised from %s", load_init(models.net, args.init))
    if args.motion_module is not None:
        load_motion_modules(models.net, args.motion_module)
    if args.generate:
        size, frames = args.train_size or models.resolution, max(32, args.frames + 8)
        generate_clips(args.clips, args.generate, size=size, frames=frames, seed=args.seed)
    if args.add_video:
        found = find_separator(args.weights_dir) if args.weights_dir is not None else None
        separator = VocalSeparator(found, device=args.device) if found else None
        with extractor_from_args(args, official_models=args.weights_dir is not None) as ex:
            for video in args.add_video:
                size = args.train_size or models.resolution
                video_to_clips(video, args.clips, size=size, extractor=ex, separator=separator)
    given = {k: getattr(args, k) for k in ("steps", "batch", "lr") if getattr(args, k) is not None}
    if args.process == 2:
        given["frames"] = args.frames
    recipe = Recipe(snr_weighting=args.snr_weighting, region_weights=tuple(args.region_weights))
    cfg = Stage2TrainConfig.official(
        args.process,
        **given,
        recipe=recipe,
        mask_mode=args.mask_mode,
        reference=args.reference,
        size=args.train_size,
        val_fraction=args.val_fraction,
        eval_every=args.eval_every,
        eval_samples=args.eval_samples,
        seed=args.seed,
        device=args.device,
        mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing,
        max_minutes=args.minutes,
    )
    train, val = open_clips(args.clips, models, cfg)
    summary = train_stage2(models, train, val, args.out, cfg, resume=args.resume)
    shown = {k: v for k, v in summary.items() if k not in ("history", "config")}
    print(json.dumps(shown, indent=1))
    print(args.out / "best")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from mmgt.audio import load_audio
    from mmgt.drivers import make_driver
    from mmgt.train.corpus.align import Aligner
    from mmgt.train.evaluate import (
        DriverUnderTest,
        describe_ground_truth,
        evaluate_clips,
        evaluate_real_speech,
    )

    clips = _load_split(args.corpus, args.split)[: args.max_clips]
    drivers = [] if args.no_baseline else [DriverUnderTest("procedural", make_driver("procedural"))]
    try:
        # The model's own motion: without the ambient motion the shipped driver adds.
        sampler = {"steps": args.steps, "guidance": args.guidance, "ambient": False,
                   "join_fade": args.join_fade,
                   "speech_gate": False if args.no_speech_gate else None,
                   "lip_bias": False if args.no_lip_bias else None}  # fmt: skip
        smga = make_driver("smga", weights=args.weights, **sampler)
        if args.live_hop:  # the live engine's windows
            from mmgt.drivers.hop import HopDriver, live_context

            context = live_context(smga.window, args.live_hop, args.lookahead)
            smga = make_driver("smga", weights=args.weights, context=context, **sampler)
            smga = HopDriver(smga, args.live_hop, args.lookahead)
        drivers.insert(0, DriverUnderTest("smga", smga))
    except InputError as exc:
        log.warning("SMGA not evaluated: %s", exc)
    recordings = [(n, load_audio(REAL_SPEECH / f"{n}.wav"), t) for n, t in REAL_TEXTS.items()]
    aligner = Aligner()
    results = {"split": args.split, "clips": len(clips)}
    results["ground_truth"] = describe_ground_truth(clips)
    for dut in drivers:
        results[dut.name] = {
            "corpus": evaluate_clips(dut, clips),
            "shuffled_audio": evaluate_clips(dut, clips, shuffle_audio=True),
            "real_speech": evaluate_real_speech(dut, recordings, clips[0][2], aligner),
        }
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0
