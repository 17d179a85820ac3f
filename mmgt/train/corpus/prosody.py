"""Prosody from audio + alignment: energy, f0 (YIN), syllable prominence and pitch accents.

Syllables are vowel phones. A syllable's prominence combines its f0 peak, loudness peak and
duration (z-scores within the clip) with a bonus for content words; a word's stressed syllable
is its most prominent vowel. Accents are the stressed syllables of content words whose
prominence stands out, at least ``min_gap_s`` apart; the last content word of each phrase gets a
nuclear-accent bonus. Phrases are stretches of speech between pauses of ``pause_s`` or more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.signal

from mmgt.train.corpus.align import SILENCE, Alignment
from mmgt.train.corpus.lips import VOWELS

HOP_S = 0.01
SR = 16000
FUNCTION_WORDS = frozenset(
    "a an the and or but if so as at by for from in into of on to with about before after under "
    "near next than then i you he she it we they me him her us them my your his its our their "
    "is am are was were be been being do does did have has had will would can could shall should "
    "may might must not no this that these those there here what which who whom whose where when "
    "why how very such some any each every all both oh okay well".split()
)


@dataclass(frozen=True)
class Prosody:
    """Frame-wise (10 ms) loudness in dBFS and f0 in semitones re the clip median (NaN: none)."""

    energy_db: np.ndarray
    f0_st: np.ndarray
    hop_s: float = HOP_S


@dataclass(frozen=True)
class Accent:
    """A pitch accent: vowel onset time (s), strength in [0, 1], word index, phrase index."""

    time: float
    strength: float
    word: int
    phrase: int


def yin(x: np.ndarray, fmin: float = 60.0, fmax: float = 420.0, frame: int = 1024) -> np.ndarray:
    """f0 (Hz) every 10 ms by YIN (de Cheveigné & Kawahara 2002), frames centred on the hop.

    Cumulative-mean-normalised difference over a 512-sample window, first dip under 0.15 (else
    the global minimum), parabolic refinement. Unvoiced frames get arbitrary values: mask them.
    """
    hop, w = int(HOP_S * SR), frame // 2
    n = int(np.ceil(len(x) / hop))
    padded = np.pad(np.asarray(x, np.float64), (w, w + n * hop))
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop][:n]  # (n, frame)
    spec_a = np.fft.rfft(frames[:, :w], 2 * frame)
    spec_b = np.fft.rfft(frames, 2 * frame)
    corr = np.fft.irfft(np.conj(spec_a) * spec_b, 2 * frame)[:, : frame - w]  # r(τ), τ < w
    energy = np.concatenate([np.zeros((n, 1)), np.cumsum(frames**2, axis=1)], axis=1)
    tau = np.arange(frame - w)
    diff = energy[:, [w]] + energy[:, tau + w] - energy[:, tau] - 2 * corr  # d(τ)
    diff[:, 0] = 0.0
    cmndf = np.ones_like(diff)
    cmndf[:, 1:] = diff[:, 1:] * tau[1:] / (np.cumsum(diff[:, 1:], axis=1) + 1e-12)
    lo, hi = int(SR / fmax), min(int(SR / fmin), frame - w - 2)
    c = cmndf[:, lo : hi + 1]
    dip = (c[:, 1:-1] < 0.15) & (c[:, 1:-1] <= c[:, :-2]) & (c[:, 1:-1] <= c[:, 2:])
    best = np.where(dip.any(1), dip.argmax(1) + 1, c.argmin(1)) + lo
    best = np.clip(best, 1, frame - w - 2)
    rows = np.arange(n)
    left, mid, right = cmndf[rows, best - 1], cmndf[rows, best], cmndf[rows, best + 1]
    shift = 0.5 * (left - right) / (left - 2 * mid + right + 1e-12)
    return SR / (best + np.clip(shift, -1, 1))


def analyse(samples16k: np.ndarray, alignment: Alignment | None = None) -> Prosody:
    """Energy and f0 tracks (f0 only inside aligned vowels when an alignment is given)."""
    x = np.asarray(samples16k, np.float32)
    hop = int(HOP_S * SR)
    n = int(np.ceil(len(x) / hop))
    padded = np.pad(x, (200, 200 + n * hop - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::hop][:n]
    energy = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    if len(x) < 2048:
        return Prosody(energy, np.full(n, np.nan))
    f0 = yin(x)
    voiced = energy > energy.max() - 30
    if alignment is not None:
        in_vowel = np.zeros(n, bool)
        for p in alignment.phones:
            if p.label in VOWELS:
                in_vowel[int(p.start / HOP_S) : int(np.ceil(p.end / HOP_S))] = True
        voiced &= in_vowel
    st = 12 * np.log2(np.maximum(f0, 1.0))
    if voiced.sum() < 5:
        return Prosody(energy, np.full(n, np.nan))
    st = scipy.signal.medfilt(st, 5) - np.median(st[voiced])
    st = np.where(voiced & (np.abs(st) < 12), st, np.nan)  # octave errors and unvoiced → NaN
    return Prosody(energy, st)


def _z(v: np.ndarray) -> np.ndarray:
    ok = np.isfinite(v)
    out = np.zeros(len(v))
    if ok.sum() >= 2:
        out[ok] = (v[ok] - v[ok].mean()) / (v[ok].std() + 1e-6)
    return np.clip(out, -2.5, 2.5)


def phrases(alignment: Alignment, pause_s: float = 0.25) -> list[tuple[float, float]]:
    """(start, end) of stretches of speech separated by pauses ≥ ``pause_s``."""
    out: list[list[float]] = []
    for p in alignment.phones:
        if p.label == SILENCE:
            continue
        if out and p.start - out[-1][1] < pause_s:
            out[-1][1] = p.end
        else:
            out.append([p.start, p.end])
    return [(a, b) for a, b in out]


def accents(
    alignment: Alignment, prosody: Prosody, min_gap_s: float = 0.3, threshold: float = -0.2
) -> list[Accent]:
    """Pitch accents on the stressed syllables of content words (module docstring)."""
    vowels = [p for p in alignment.phones if p.label in VOWELS and p.word >= 0]
    if not vowels:
        return []
    hop = prosody.hop_s

    def peak(track: np.ndarray, p) -> float:  # noqa: ANN001 - Segment
        seg = track[int(p.start / hop) : max(int(np.ceil(p.end / hop)), int(p.start / hop) + 1)]
        seg = seg[np.isfinite(seg)]
        return float(seg.max()) if len(seg) else np.nan

    f0 = _z(np.array([peak(prosody.f0_st, p) for p in vowels]))
    loud = _z(np.array([peak(prosody.energy_db, p) for p in vowels]))
    dur = _z(np.log(np.array([p.end - p.start for p in vowels])))
    content = np.array([alignment.words[p.word].label not in FUNCTION_WORDS for p in vowels])
    score = 0.5 * f0 + 0.35 * loud + 0.35 * dur + np.where(content, 0.4, -0.6)
    spans = phrases(alignment)
    phrase_of = [
        next((i for i, (a, b) in enumerate(spans) if a <= p.start <= b), 0) for p in vowels
    ]
    last_content = {}
    for k, (p, c) in enumerate(zip(vowels, content, strict=True)):
        if c:
            last_content[phrase_of[k]] = p.word
    best: dict[int, int] = {}  # word → its most prominent vowel
    for k, p in enumerate(vowels):
        if content[k] and (p.word not in best or score[k] > score[best[p.word]]):
            best[p.word] = k
    found: list[Accent] = []
    for word, k in sorted(best.items(), key=lambda kv: -score[kv[1]]):
        s = score[k] + (0.5 if last_content.get(phrase_of[k]) == word else 0.0)
        t = vowels[k].start
        if s < threshold or any(abs(t - a.time) < min_gap_s for a in found):
            continue
        strength = float(np.clip((s - threshold) / 2.0, 0.15, 1.0))
        found.append(Accent(t, strength, word, phrase_of[k]))
    return sorted(found, key=lambda a: a.time)
