"""Corpus generation: plan → TTS → alignment → prosody → motion → files, resumable and parallel.

Clip ``i`` of seed ``s`` (id ``syn<s>-<i:06d>``) is a pure function of (s, i, engines): its split,
voice, rate, pitch, text, pauses, reference pose and motion style, so a larger ``clips`` extends a
corpus and an interrupted run resumes where it stopped. Clips that fail (TTS error, alignment
failure) are dropped, logged and recorded with their reason in ``skipped.jsonl`` — never retried
unless asked, never fatal for the run.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgt.audio import load_audio
from mmgt.drivers.rig import pose_sequence
from mmgt.errors import InputError, MissingDependencyError, MMGTError
from mmgt.train.corpus import format as fmt
from mmgt.train.corpus import tts
from mmgt.train.corpus.align import (
    SILENCE,
    Aligner,
    Alignment,
    AlignmentError,
    Segment,
)
from mmgt.train.corpus.motion import MotionStyle, frame_count, motion_curves
from mmgt.train.corpus.poses import random_reference
from mmgt.train.corpus.prosody import analyse
from mmgt.train.corpus.texts import SentenceGenerator

log = logging.getLogger(__name__)
SR = 16000
SPLIT_P = {"test": 0.10, "val": 0.05}  # the rest is train
ENGINE_WEIGHTS = {"espeak-ng": 0.6, "flite": 0.3, "piper": 0.3}
_ALIGNER: Aligner | None = None


@dataclass(frozen=True)
class ClipPlan:
    """Everything random about one clip, drawn from (seed, index)."""

    id: str
    seed: int
    index: int
    split: str
    engine: str
    voice: str
    rate: float
    pitch: float | None
    sentences: tuple[str, ...]
    pauses_s: tuple[float, ...]  # before the first sentence, between sentences, after the last


def plan_clip(seed: int, index: int, engines: list[str]) -> ClipPlan:
    """The plan of clip ``index``; test clips use held-out voices only, train/val never do."""
    import random  # noqa: PLC0415 - stdlib Random is what the text generator uses

    rng = random.Random(f"mmgt-corpus:{seed}:{index}")
    r = rng.random()
    split = "test" if r < SPLIT_P["test"] else "val" if r < sum(SPLIT_P.values()) else "train"
    pools = {e: [v for v in tts.voices(e) if v.held_out == (split == "test")] for e in engines}
    usable = [e for e in engines if pools[e]]
    if not usable:
        usable, split = [e for e in engines if tts.voices(e)], "train"
        pools = {e: [v for v in tts.voices(e) if not v.held_out] or tts.voices(e) for e in usable}
    engine = rng.choices(usable, [ENGINE_WEIGHTS.get(e, 0.3) for e in usable])[0]
    voice = rng.choice(pools[engine])
    rate, pitch = tts.sample_prosody(engine, rng)
    sentences = SentenceGenerator(rng.getrandbits(32)).text(1, 3)
    pauses = [rng.uniform(0.15, 0.6)] + [rng.uniform(0.25, 1.0) for _ in sentences[1:]]
    pauses.append(rng.uniform(0.2, 0.8))
    return ClipPlan(
        id=f"syn{seed}-{index:06d}",
        seed=seed,
        index=index,
        split=split,
        engine=engine,
        voice=voice.name,
        rate=rate,
        pitch=pitch,
        sentences=tuple(sentences),
        pauses_s=tuple(round(p, 3) for p in pauses),
    )


def _trim(x: np.ndarray, margin_s: float = 0.05) -> np.ndarray:
    """Cut the TTS engine's own leading/trailing silence (keeping ``margin_s``)."""
    env = np.abs(x)
    loud = np.flatnonzero(env > env.max() * 10 ** (-45 / 20))
    if not len(loud):
        raise MMGTError("the TTS engine produced silence")
    margin = int(margin_s * SR)
    return x[max(loud[0] - margin, 0) : loud[-1] + margin]


def _aligner() -> Aligner:
    global _ALIGNER
    if _ALIGNER is None:
        _ALIGNER = Aligner()
    return _ALIGNER


def _speak(plan: ClipPlan, workdir: Path) -> tuple[np.ndarray, Alignment]:
    """Audio of the clip (sentences with pauses, normalised) and its alignment."""
    voice = tts.Voice(plan.engine, plan.voice)
    parts, phones, words = [np.zeros(int(plan.pauses_s[0] * SR), np.float32)], [], []
    offset = len(parts[0])
    for k, sentence in enumerate(plan.sentences):
        wav = workdir / f"{k}.wav"
        tts.synthesize(voice, sentence, plan.rate, plan.pitch, wav)
        speech = _trim(load_audio(wav))
        context = np.zeros(int(0.1 * SR), np.float32)  # silence around it for the aligner
        padded = np.concatenate([context, speech, context])
        try:
            local = _aligner().align(padded, sentence, seed=plan.index * 31 + k)
        except AlignmentError as exc:
            raise AlignmentError(f"sentence {k + 1} ({sentence!r}): {exc}") from exc
        shifted = local.shifted((offset - len(context)) / SR, len(words))
        phones += shifted.phones
        words += shifted.words
        gap = np.zeros(int(plan.pauses_s[k + 1] * SR), np.float32)
        parts += [speech, gap]
        offset += len(speech) + len(gap)
    audio = np.concatenate(parts)
    rms = float(np.sqrt(np.mean(np.concatenate(parts[1::2]) ** 2)))
    audio *= min(0.1 / max(rms, 1e-6), 0.95 / max(float(np.abs(audio).max()), 1e-6))
    return audio.astype(np.float32), _fill_silence(phones, words, len(audio) / SR)


def _fill_silence(phones: list[Segment], words: list[Segment], end_s: float) -> Alignment:
    """Phones covering [0, end_s): clipped, in order, gaps and padding labelled silence."""
    out: list[Segment] = []
    t = 0.0
    for p in sorted(phones, key=lambda s: s.start):
        start, stop = max(p.start, t), min(p.end, end_s)
        if stop - start < 1e-4:
            continue
        if start - t > 1e-4:
            out.append(Segment(SILENCE, t, start))
        out.append(Segment(p.label, start, stop, p.word))
        t = stop
    if end_s - t > 1e-4:
        out.append(Segment(SILENCE, t, end_s))
    merged: list[Segment] = []
    for p in out:  # merge adjacent silences
        if merged and p.label == SILENCE == merged[-1].label:
            merged[-1] = Segment(SILENCE, merged[-1].start, p.end)
        else:
            merged.append(p)
    return Alignment(merged, words)


def make_clip(root: Path, plan: ClipPlan) -> dict[str, Any]:
    """Generate and write one clip; returns its manifest record (raises on failure)."""
    with tempfile.TemporaryDirectory(prefix="mmgt-corpus-") as tmp:
        audio, alignment = _speak(plan, Path(tmp))
    rng = np.random.default_rng([plan.seed, plan.index, 7])
    ref_name, reference = random_reference(rng)
    style = MotionStyle.sample(rng)
    frames = frame_count(len(audio))
    prosody = analyse(audio, alignment)
    curves = motion_curves(alignment, prosody, frames, seed=int(rng.integers(2**31)), style=style)
    keypoints = pose_sequence(reference, curves)
    record = {
        "id": plan.id,
        "split": plan.split,
        "engine": plan.engine,
        "voice": plan.voice,
        "rate": plan.rate,
        "pitch": plan.pitch,
        "text": " ".join(plan.sentences),
        "synthetic": True,
        "reference_name": ref_name,
        "style": style.as_dict(),
        "seed": plan.seed,
        "index": plan.index,
    }
    return fmt.write_clip(
        root,
        record,
        audio,
        keypoints,
        reference,
        phones=fmt.segments_array(alignment.phones, fmt.PHONE_DTYPE),
        words=fmt.segments_array(alignment.words, fmt.WORD_DTYPE),
        curves=curves,
    )


def _work(root: str, plan: ClipPlan) -> tuple[str, dict[str, Any]]:
    """Worker entry: ("ok", record) or ("skipped", {"id", "reason"}); never raises."""
    try:
        return "ok", make_clip(Path(root), plan)
    except MMGTError as exc:
        return "skipped", {"id": plan.id, "reason": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - one bad clip must not stop the run
        log.debug("clip %s failed:\n%s", plan.id, traceback.format_exc())
        return "skipped", {"id": plan.id, "reason": f"unexpected {type(exc).__name__}: {exc}"}


def generate_corpus(
    out_root: str | os.PathLike,
    clips: int,
    seed: int,
    engines: list[str] | tuple[str, ...] | str = "auto",
    workers: int = 1,
    progress: bool = True,
    retry_skipped: bool = False,
) -> dict[str, Any]:
    """Generate (or resume) clips ``0 … clips-1`` of ``seed`` into ``out_root``; returns a summary.

    ``engines``: "auto" (every installed engine) or names from :data:`tts.ENGINES`. With
    ``workers > 1`` clips are made in spawned processes, so a calling script needs the usual
    ``if __name__ == "__main__":`` guard. Clips whose worker process died are not recorded
    (``failed`` in the summary) and are retried by the next run.
    """
    root = Path(out_root)
    available = tts.available_engines()
    if engines == "auto":
        wanted = available
    else:
        wanted = [engines] if isinstance(engines, str) else list(engines)
    unknown = [e for e in wanted if e not in tts.ENGINES]
    if unknown:
        raise InputError(f"unknown TTS engines {unknown}; known: {', '.join(tts.ENGINES)}")
    missing = [e for e in wanted if e not in available]
    if missing or not wanted:
        raise MissingDependencyError(
            f"TTS engines not installed: {', '.join(missing) or 'none found'} (found: "
            f"{', '.join(available) or 'nothing'}); install espeak-ng or flite"
        )
    if clips < 1 or workers < 1 or seed < 0:
        raise InputError(
            f"clips and workers must be ≥ 1 and seed ≥ 0, got {clips}, {workers}, {seed}"
        )
    root.mkdir(parents=True, exist_ok=True)
    done = fmt.manifest_ids(root)
    skipped_before = set() if retry_skipped else fmt.manifest_ids(root, fmt.SKIPPED)
    plans, existing, already = [], 0, 0
    for i in range(clips):
        plan = plan_clip(seed, i, wanted)
        if plan.id in done or plan.id in skipped_before:
            already += 1
            continue
        recovered = fmt.recover_record(root, plan.id)
        if recovered is not None:  # written by an interrupted run, manifest line missing
            fmt.append_jsonl(root, recovered)
            existing += 1
        else:
            plans.append(plan)
    if not (root / fmt.MANIFEST).exists():
        (root / fmt.MANIFEST).touch()
    summary: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    seconds = 0.0
    start = time.perf_counter()
    bar = _progress(len(plans), progress)
    for status, rec in _run(root, plans, workers):
        if status == "ok":
            fmt.append_jsonl(root, rec)
            seconds += rec["seconds"]
        else:
            log.warning("%s clip %s: %s", status, rec["id"], rec["reason"])
            if status == "skipped":  # deterministic failures are not retried
                fmt.append_jsonl(root, rec, fmt.SKIPPED)
            reasons[rec["reason"].split(":")[0]] += 1
        summary[status] += 1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    return {
        "planned": clips,
        "written": summary["ok"],
        "skipped": summary["skipped"],
        "failed": summary["failed"],
        "already_done": already,
        "recovered": existing,
        "skip_reasons": dict(reasons),
        "speech_seconds": round(seconds, 2),
        "wall_seconds": round(wall, 2),
        "clips_per_minute": round(60 * summary["ok"] / wall, 1) if summary["ok"] else 0.0,
        "speech_seconds_per_wall_second": round(seconds / wall, 2) if summary["ok"] else 0.0,
        "engines": wanted,
        "splits": dict(Counter(c.split for c in fmt.read_corpus(root))),
    }


def _run(root: Path, plans: list[ClipPlan], workers: int):  # noqa: ANN202 - generator
    if workers <= 1 or len(plans) <= 1:
        for plan in plans:
            yield _work(str(root), plan)
        return
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {pool.submit(_work, str(root), plan): plan for plan in plans}
        for fut in cf.as_completed(futures):
            try:
                yield fut.result()
            except cf.process.BrokenProcessPool:  # a worker died (not recorded: retried next run)
                yield "failed", {"id": futures[fut].id, "reason": "a worker process died"}


def _progress(total: int, enabled: bool):  # noqa: ANN202 - tqdm or None
    if not enabled or total == 0:
        return None
    from tqdm import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="clip", desc="corpus")
