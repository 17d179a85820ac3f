"""Phone timings by forced alignment with pocketsphinx (BSD; bundled en-US model + CMU dict).

Two passes, as pocketsphinx 5 requires: ``set_align_text`` + decode gives word boundaries, then
``set_alignment`` + decode again gives phones (10 ms frames). Settings that make TTS speech align
reliably (measured: 0 failures in 100 random voices/rates, against 69 with the defaults):
``bestpath`` off (its lattice rescoring hands the state aligner impossible 1-frame phones); wide
beams; a fixed cepstral-mean start (typical of TTS speech) and fresh feature state for every pass
(so results do not depend on what was aligned before); a -60 dBFS seeded noise floor under audio
normalised to -20 dBFS (digital silence upsets the features).

Words missing from the dictionary get a pronunciation from espeak-ng's phoneme output (run as a
separate process) mapped to ARPAbet; if that fails the alignment fails. Failures raise
:class:`AlignmentError` with the reason; callers drop the clip.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

from mmgt.errors import MMGTError
from mmgt.train.corpus.texts import words_for_alignment

log = logging.getLogger(__name__)

FRAME_S = 0.01  # pocketsphinx frame
SILENCE = "SIL"
_CONFIGS = (
    {"bestpath": False, "beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80},
    {"bestpath": False, "beam": 1e-150, "wbeam": 1e-120, "pbeam": 1e-150},  # the retry
)
_CMN_INIT = "58.57,-2.32,-5.01,11.11,-9.65,3.91,-3.15,-17.54,-2.30,-2.55,10.77,-6.12,-8.29"
# espeak-ng phoneme mnemonics → ARPAbet, longest match first.
_ESPEAK_TO_ARPA = {
    "aI@": "AY ER", "aU@": "AW ER", "i@3": "IH R", "o@": "AO R", "e@": "EH R", "i@": "IH R",
    "U@": "UH R", "A@": "AA R", "O@": "AO R", "3:": "ER", "A:": "AA", "O:": "AO", "i:": "IY",
    "u:": "UW",
    "eI": "EY", "aI": "AY", "aU": "AW", "OI": "OY", "oU": "OW", "@U": "OW", "@L": "AH L",
    "tS": "CH", "dZ": "JH", "r-": "R", "n-": "N", "m-": "M", "3": "ER", "@": "AH", "a": "AE",
    "A": "AA", "0": "AA", "O": "AO", "E": "EH", "I": "IH", "i": "IY", "U": "UH", "V": "AH",
    "u": "UW", "e": "EH", "o": "OW", "T": "TH", "D": "DH", "S": "SH", "Z": "ZH", "N": "NG",
    "j": "Y", "h": "HH", "?": "T", "x": "K", "L": "L", "r": "R", "w": "W", "p": "P", "b": "B",
    "t": "T", "d": "D", "k": "K", "g": "G", "f": "F", "v": "V", "s": "S", "z": "Z", "m": "M",
    "n": "N", "l": "L",
}  # fmt: skip
_TOKEN = re.compile("|".join(re.escape(k) for k in sorted(_ESPEAK_TO_ARPA, key=len, reverse=True)))


class AlignmentError(MMGTError):
    """The text could not be aligned to the audio (the clip is dropped)."""


@dataclass(frozen=True)
class Segment:
    """A phone or word with times in seconds; ``word`` indexes the word list (−1: silence)."""

    label: str
    start: float
    end: float
    word: int = -1


@dataclass(frozen=True)
class Alignment:
    """Phones (ARPAbet without stress, or ``SIL``) and words of one utterance, in time order."""

    phones: list[Segment]
    words: list[Segment]

    def shifted(self, seconds: float, word_offset: int) -> Alignment:
        def move(s: Segment, w: int) -> Segment:
            return Segment(s.label, s.start + seconds, s.end + seconds, w)

        return Alignment(
            [move(p, p.word + word_offset if p.word >= 0 else -1) for p in self.phones],
            [move(w, w.word + word_offset) for w in self.words],
        )


def espeak_arpabet(word: str) -> str | None:
    """ARPAbet for a word from espeak-ng's phoneme output, or None if espeak-ng is missing."""
    if not shutil.which("espeak-ng"):
        return None
    try:
        out = subprocess.run(
            ["espeak-ng", "-v", "en-us", "-q", "-x", "--stdin"],
            input=word,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    phones = " ".join(_ESPEAK_TO_ARPA[m] for m in _TOKEN.findall(out))
    return phones or None


class Aligner:
    """A reusable pocketsphinx forced aligner (one per process; not thread-safe).

    An alignment that fails (no path, or rejected by :func:`check_alignment`) is retried once with
    much wider beams (a second decoder, created on first need): that rescues about half of the
    failures at no cost to the rest.
    """

    def __init__(self) -> None:
        self._decoders: list = [self._new_decoder(0)]
        self._oov: dict[str, str | None] = {}

    @staticmethod
    def _new_decoder(k: int):  # noqa: ANN205 - pocketsphinx.Decoder
        from pocketsphinx import Decoder  # noqa: PLC0415 - heavy, first use only

        return Decoder(lm=None, loglevel="FATAL", **_CONFIGS[k])

    @property
    def _decoder(self):  # noqa: ANN202 - the primary pocketsphinx.Decoder
        return self._decoders[0]

    def _get(self, k: int):  # noqa: ANN202
        while len(self._decoders) <= k:
            decoder = self._new_decoder(len(self._decoders))
            for word, phones in self._oov.items():
                if phones:
                    decoder.add_word(word, phones, True)
            self._decoders.append(decoder)
        return self._decoders[k]

    def ensure_words(self, words: list[str]) -> list[str]:
        """Add missing words from espeak-ng; returns the words that are still missing."""
        missing = []
        for w in words:
            if self._decoder.lookup_word(w) is not None:
                continue
            if w not in self._oov:
                self._oov[w] = espeak_arpabet(w)
                if self._oov[w]:
                    for decoder in self._decoders:
                        decoder.add_word(w, self._oov[w], True)
                    log.debug("out-of-vocabulary %r → %s", w, self._oov[w])
            if not self._oov[w]:
                missing.append(w)
        return missing

    @staticmethod
    def _decode(decoder, pcm: bytes) -> None:  # noqa: ANN001
        # Fresh feature state and cepstral mean for every pass: results must not depend on what
        # this decoder aligned before (measured: without this, 40 % of alignments change).
        decoder.reinit_feat()
        decoder.set_cmn(_CMN_INIT)
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()

    def _run(self, decoder, pcm: bytes, words: list[str]) -> Alignment:  # noqa: ANN001
        try:
            decoder.set_align_text(" ".join(words))
            self._decode(decoder, pcm)
            if decoder.hyp() is None:
                raise AlignmentError("the aligner found no path through the text")
            decoder.set_alignment()
            self._decode(decoder, pcm)
            result = decoder.get_alignment()
        except RuntimeError as exc:
            raise AlignmentError(f"pocketsphinx failed: {exc}") from exc
        if result is None:
            raise AlignmentError("pocketsphinx returned no phone alignment")
        return self._collect(result, len(words))

    def align(
        self, samples16k: np.ndarray, text: str, seed: int = 0, check: bool = True
    ) -> Alignment:
        """Phones and words of ``text`` spoken in ``samples16k`` (16 kHz mono float).

        ``check`` also rejects implausible alignments (:func:`check_alignment`).
        """
        words = words_for_alignment(text)
        if not words:
            raise AlignmentError(f"no words to align in {text!r}")
        missing = self.ensure_words(words)
        if missing:
            raise AlignmentError(f"words not in the dictionary: {', '.join(missing)}")
        x = np.asarray(samples16k, np.float64)
        x = x * (0.1 / max(float(np.sqrt(np.mean(x**2))), 1e-6))
        x += 1e-3 * np.random.default_rng(seed).standard_normal(len(x))
        pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
        errors = []
        for k in range(len(_CONFIGS)):
            try:
                alignment = self._run(self._get(k), pcm, words)
                if check:
                    check_alignment(alignment, samples16k)
                return alignment
            except AlignmentError as exc:
                errors.append(str(exc))
        raise AlignmentError("; with wide beams: ".join(errors))

    @staticmethod
    def _collect(result, n_words: int) -> Alignment:  # noqa: ANN001 - pocketsphinx Alignment
        phones: list[Segment] = []
        words: list[Segment] = []
        for entry in result:
            start, end = entry.start * FRAME_S, (entry.start + entry.duration) * FRAME_S
            is_word = not entry.name.startswith(("<", "[", "+"))
            index = len(words) if is_word else -1
            if is_word:
                words.append(Segment(re.sub(r"\(\d+\)$", "", entry.name), start, end, index))
            for p in entry:
                label = p.name if is_word and p.name.isalpha() and p.name != SILENCE else SILENCE
                p_start = p.start * FRAME_S
                phones.append(Segment(label, p_start, p_start + p.duration * FRAME_S, index))
        if len(words) != n_words:
            raise AlignmentError(f"aligned {len(words)} of {n_words} words")
        return Alignment(phones, words)


def check_alignment(alignment: Alignment, samples16k: np.ndarray) -> None:
    """Raise :class:`AlignmentError` for implausible alignments.

    Rejected: most phones squeezed to the 30 ms minimum (the aligner forced the text through),
    or much of the loud audio labelled as silence (text and speech do not match).
    """
    spoken = [p for p in alignment.phones if p.label != SILENCE]
    if not spoken:
        raise AlignmentError("no phones aligned")
    squeezed = np.mean([p.end - p.start <= 0.031 for p in spoken])
    if squeezed > 0.5:
        raise AlignmentError(f"{squeezed:.0%} of phones at the minimum duration")
    hop = int(FRAME_S * 16000)
    n = len(samples16k) // hop
    frames = samples16k[: n * hop].reshape(n, hop).astype(np.float64)
    db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = db > db.max() - 25
    silent = np.zeros(n, bool)
    for p in alignment.phones:
        if p.label == SILENCE:
            silent[int(round(p.start / FRAME_S)) : int(round(p.end / FRAME_S))] = True
    lost = float(np.mean(silent[loud])) if loud.any() else 1.0
    if lost > 0.2:
        raise AlignmentError(f"{lost:.0%} of the loud audio was aligned to silence")
