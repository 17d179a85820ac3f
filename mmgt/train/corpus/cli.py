"""Command line of the corpus tools: ``mmgt data corpus`` and ``mmgt data extract``.

:func:`add_cli` adds the ``data`` command to the main parser's subparsers and :func:`run_cli`
runs it; ``python -m mmgt.train.corpus.cli …`` works stand-alone too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from mmgt.errors import MMGTError
from mmgt.keypoints.extractor import add_pose_model_arguments, extractor_from_args


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` with ``corpus`` and ``extract`` subcommands; returns the ``data`` parser."""
    data = subparsers.add_parser("data", help="build training data (synthetic corpus, videos)")
    sub = data.add_subparsers(dest="data_command", required=True)
    c = sub.add_parser("corpus", help="generate a synthetic speech–motion corpus with TTS")
    c.add_argument("--out", type=Path, required=True, help="corpus folder (created/resumed)")
    c.add_argument("--clips", type=int, required=True, help="number of clips (ids 0…N-1)")
    c.add_argument("--seed", type=int, default=0, help="corpus seed (clip i is a function of it)")
    c.add_argument("--workers", type=int, default=1, help="parallel processes")
    c.add_argument(
        "--engines",
        default="auto",
        help="comma-separated TTS engines: espeak-ng, flite, piper (default: all installed)",
    )
    c.add_argument("--retry-skipped", action="store_true", help="retry clips that failed before")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("extract", help="add a talking-person video to a corpus (real data)")
    e.add_argument("--video", type=Path, required=True, help="video file with an audio track")
    e.add_argument("--out", type=Path, required=True, help="corpus folder")
    e.add_argument("--id", help="clip id (default: the video's file name without suffix)")
    e.add_argument("--split", choices=("train", "val", "test"), default="train")
    e.add_argument("--text", default="", help="transcript, if known")
    add_pose_model_arguments(e, weights_dir=True)
    return data


def run_cli(args: argparse.Namespace) -> int:
    """Run a parsed ``data`` command; prints a JSON summary; returns the exit code."""
    if args.data_command == "corpus":
        from mmgt.train.corpus.generate import generate_corpus  # noqa: PLC0415

        engines = "auto" if args.engines == "auto" else args.engines.split(",")
        summary = generate_corpus(
            args.out,
            args.clips,
            args.seed,
            engines=engines,
            workers=args.workers,
            progress=not args.quiet,
            retry_skipped=args.retry_skipped,
        )
    elif args.data_command == "extract":
        from mmgt.train.corpus.video import prepare_video  # noqa: PLC0415

        clip_id = args.id or args.video.stem
        with extractor_from_args(args, official_models=args.weights_dir is not None) as ex:
            summary = prepare_video(
                args.video, args.out, clip_id, args.split, text=args.text, extractor=ex
            )
    else:  # pragma: no cover - argparse enforces the choices
        raise MMGTError(f"unknown data command {args.data_command!r}")
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m mmgt.train.corpus.cli corpus|extract … [-v]``."""
    parser = argparse.ArgumentParser(prog="mmgt")
    add_cli(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    args = parser.parse_args(["data", *(a for a in argv if a not in ("-v", "--verbose"))])
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return run_cli(args)
    except MMGTError as exc:
        print(f"mmgt data {args.data_command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
