"""``mmgt train`` and ``mmgt eval``: SMGA training on a corpus, and driver evaluation.

mmgt train --corpus DIR --out DIR [--preset small] [--steps N] [--minutes M] [--resume]
mmgt eval --corpus DIR [--split test] [--weights FILE] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from mmgt.audio import extract_light_features
from mmgt.errors import InputError

log = logging.getLogger(__name__)
REAL_SPEECH = Path(__file__).resolve().parent / "data" / "real_speech"
REAL_TEXTS = {
    "arctic_a0007": "And you always want to see it in the superlative degree",
    "arctic_a0009": "He turned sharply, and faced Gregson across the table",
}


def add_cli(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train SMGA on a corpus (docs/corpus.md)")
    t.add_argument("--corpus", type=Path, required=True, help="corpus folder")
    t.add_argument("--out", type=Path, required=True, help="output folder (checkpoints)")
    t.add_argument("--preset", default="small", help="SMGA preset (small, tiny, official)")
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--minutes", type=float, help="wall-time budget; resume later with --resume")
    t.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    t.add_argument("--device", default="cpu", help="cpu or cuda:N")
    t.add_argument("--mixed-precision", action="store_true", help="autocast on CUDA")
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--no-augment", action="store_true", help="train on clean audio only")
    t.add_argument(
        "--features",
        choices=("light", "official"),
        default="light",
        help="light (43-d, streaming) or official (WavLM ‖ EDGE, 1059-d; needs --wavlm)",
    )
    t.add_argument("--wavlm", type=Path, help="WavLM (transformers folder or WavLM-Large.pt)")
    t.add_argument("--seed", type=int, default=0)

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
    e.add_argument("--no-baseline", action="store_true", help="skip the procedural baseline")
    e.add_argument("--out", type=Path, help="write the results as JSON")


def _load_split(root: Path, split: str) -> list[tuple]:
    from mmgt.train.corpus.format import read_corpus

    clips = [c for c in read_corpus(root) if c.split == split]
    if not clips:
        raise InputError(f"{root} has no {split!r} clips")
    return [c.load() for c in clips]


def run_train(args: argparse.Namespace) -> int:
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
    )
    summary = train_smga(cfg, train, val, args.out, tc, resume=args.resume, feature_kind=kind)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=1))
    print(args.out / "best.safetensors")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from mmgt.audio import load_audio
    from mmgt.drivers import make_driver
    from mmgt.train.corpus.align import Aligner
    from mmgt.train.evaluate import DriverUnderTest, evaluate_clips, evaluate_real_speech

    clips = _load_split(args.corpus, args.split)[: args.max_clips]
    drivers = [] if args.no_baseline else [DriverUnderTest("procedural", make_driver("procedural"))]
    try:
        sampler = {"steps": args.steps, "guidance": args.guidance}
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
