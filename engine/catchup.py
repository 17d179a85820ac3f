"""Catching up after late audio, so live latency does not ratchet up over a long session.

A live session keeps its timeline moving with the clock: when no audio has arrived, it appends
silence (idle). If the audio was only late (network jitter, a stalled client or event loop), it
then arrives in a burst and lands *after* that silence, so every later frame is shown that much
later, and each hiccup adds to the delay for the rest of the session (measured before this
module: +0.6 to +0.7 s after 30 minutes, ``bench/bench_soak.py``). Jitter buffers solve the same
problem by playing faster for a while; here the silence is made up from the audio that follows,
until the timeline is back with the clock, in two ways:

1. quiet 10 ms blocks are left out (:func:`drop_quiet`). Quiet blocks are common even within
   speech, so this alone usually catches up within a few seconds. What counts as quiet follows
   the microphone (:class:`NoiseFloor`): below −40 dBFS always, and up to 6 dB above the
   input's own background level (but never above −30 dBFS), so a noisy room catches up too,
   while speech, which stands well above its background, is kept whole;
2. whatever is still owed is made up by time compression (:class:`TimeCompressor`, a jitter
   buffer's "accelerate"): one pitch period at a time is cut out with a cross-fade, at most
   :data:`SPEEDUP` of the audio, so voices keep their pitch and play at most about 10 % faster.
   This is what catches up in a room louder than −30 dBFS, over music, or in speech without
   pauses.

The video is made from the audio as it comes out of this, so lips and sound stay together.

:class:`LateAudio` keeps the books. Only short idle fills (up to ``window_s``) count: after a
longer silence the next audio is a new utterance, not a late one, and a burst that runs further
ahead than the silence it follows (a TTS client sending faster than real time) keeps everything
beyond that silence.
"""

from __future__ import annotations

import collections

import numpy as np

BLOCK_S = 0.01  # the unit that may be left out
QUIET_DBFS = -40.0  # RMS below this is always quiet (a quiet room is -50 to -60 dBFS)
NOISE_MARGIN_DB = 6.0  # a block within this of the background level is quiet too…
QUIET_CEILING_DBFS = -30.0  # …unless it is louder than this (too noisy to tell speech apart)
TOLERANCE_S = 0.1  # the timeline may run this far ahead of the clock before catching up
SPEEDUP = 0.1  # time compression leaves out at most this share of the audio (1.11× speed)
MIN_CUT_S, MAX_CUT_S = 0.0025, 0.0125  # a cut is one period of 80–400 Hz (voice pitch)


def _as_float(chunk: np.ndarray) -> np.ndarray:
    x = np.asarray(chunk, np.float32)
    return x / 32768.0 if chunk.dtype == np.int16 else x


def block_levels(chunk: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """RMS level in dBFS of each whole 10 ms block of ``chunk`` ((n,) or (n, channels), float
    or int16 at ``rate``), and the block length in samples."""
    block = max(1, int(rate * BLOCK_S))
    whole = (chunk.shape[0] // block) * block
    x = _as_float(chunk[:whole])
    mono = x.mean(axis=1) if x.ndim == 2 else x
    power = np.mean(mono.reshape(-1, block) ** 2, axis=1)  # (blocks,)
    return 10 * np.log10(power + 1e-12), block


def drop_quiet(chunk: np.ndarray, rate: int, limit: int, quiet_dbfs: float = QUIET_DBFS):  # noqa: ANN201
    """Leave out quiet 10 ms blocks (below ``quiet_dbfs``) of ``chunk`` ((n,) or (n, channels),
    float or int16 at ``rate``), at most ``limit`` samples, earliest first. Returns (kept chunk,
    samples left out)."""
    levels, block = block_levels(chunk, rate)
    quiet = np.flatnonzero(levels < quiet_dbfs)[: limit // block]
    if quiet.size == 0:
        return chunk, 0
    keep = np.ones(chunk.shape[0], bool)
    keep[(quiet[:, None] * block + np.arange(block)).ravel()] = False
    return chunk[keep], int(quiet.size * block)


class TimeCompressor:
    """Shortens audio by up to :data:`SPEEDUP` without changing its pitch, one cut at a time.

    A cut takes a stretch of ``2 L`` samples and cross-fades its first half into its second,
    leaving ``L`` out. ``L`` is where the stretch best matches itself shifted (a pitch period for
    a voice or a tone: the cut is then seamless). For noise nothing matches, and the cross-fade
    gain is raised so the noise keeps its level through the cut (``1/sqrt(a² + b² + 2abr)`` for
    fade weights ``a``, ``b`` and correlation ``r``: linear for ``r = 1``, equal power for
    ``r = 0``). A cut of ``L`` needs ``L / speedup`` samples of input, so the next one starts
    that far after it; the wait carries over between chunks. A cut stays within one chunk
    (nothing is held back to wait for more audio), so chunks shorter than 25 ms limit the
    periods it can find (10 ms chunks: pitch above 200 Hz).
    """

    def __init__(self, speedup: float = SPEEDUP) -> None:
        if not 0 <= speedup < 0.5:
            raise ValueError(f"speedup must be in [0, 0.5), got {speedup}")
        self.speedup = speedup
        self.reset()

    def reset(self) -> None:
        self.wait = 0  # input samples to pass before the next cut may start

    def __call__(self, chunk: np.ndarray, rate: int, limit: int) -> tuple[np.ndarray, int]:
        """Compress ``chunk`` ((n,) or (n, channels), float or int16 at ``rate``), leaving out
        at most ``limit`` samples. Returns (shorter chunk, samples left out)."""
        lo, hi = max(2, int(rate * MIN_CUT_S)), int(rate * MAX_CUT_S)
        if self.speedup == 0 or limit < lo:
            return chunk, 0
        n = chunk.shape[0]
        x = _as_float(chunk)
        mono = x.mean(axis=1) if x.ndim == 2 else x
        pieces, pos, removed = [], 0, 0
        while True:
            start = pos + self.wait
            top = min(hi, (n - start) // 2, limit - removed)
            if top < lo:  # too close to the chunk's end (or nothing more may go): next chunk
                self.wait = max(0, start - n)
                break
            lag = _best_lag(mono[start : start + 2 * top], lo, top)
            a, b = slice(start, start + lag), slice(start + lag, start + 2 * lag)
            pieces += [x[pos:start], _cross_fade(x[a], x[b], mono[a], mono[b])]
            pos, removed = start + 2 * lag, removed + lag
            self.wait = max(0, round(lag / self.speedup) - 2 * lag)
        if not removed:
            return chunk, 0
        out = np.concatenate([*pieces, x[pos:]])
        if chunk.dtype == np.int16:
            out = np.clip(np.round(out * 32768.0), -32768, 32767).astype(np.int16)
        return out, removed


def _best_lag(x: np.ndarray, lo: int, hi: int) -> int:
    """The shift in [lo, hi] at which x[:hi] best matches x[L : L + hi] (normalised
    cross-correlation; x has 2·hi samples)."""
    head = x[:hi]
    dots = np.correlate(x[: 2 * hi], head, mode="valid")[lo : hi + 1]  # (hi - lo + 1,)
    energy = np.cumsum(np.concatenate([[0.0], x.astype(np.float64) ** 2]))
    windows = energy[lo + hi : 2 * hi + 1] - energy[lo : hi + 1]  # ‖x[L : L + hi]‖²
    score = dots / np.sqrt(windows * float(head @ head) + 1e-12)
    return lo + int(np.argmax(score))


def _cross_fade(a: np.ndarray, b: np.ndarray, a_mono: np.ndarray, b_mono: np.ndarray) -> np.ndarray:
    """Fade ``a`` out and ``b`` in over their length, with the gain that keeps the level of
    partly correlated signals."""
    r = float(a_mono @ b_mono) / (float(np.sqrt((a_mono @ a_mono) * (b_mono @ b_mono))) + 1e-12)
    r = min(max(r, 0.0), 1.0)
    fade_in = (np.arange(a.shape[0], dtype=np.float32) + 0.5) / a.shape[0]  # (L,)
    fade_out = 1.0 - fade_in
    gain = 1.0 / np.sqrt(fade_out**2 + fade_in**2 + 2 * r * fade_out * fade_in)
    if a.ndim == 2:
        fade_in, fade_out, gain = fade_in[:, None], fade_out[:, None], gain[:, None]
    return ((a * fade_out + b * fade_in) * gain).astype(np.float32)


class LateAudio:
    """The books of one timeline: idle silence that may stand in for late audio, and how much
    of it is still to be made up (all in samples of the 16 kHz timeline)."""

    def __init__(self, window_s: float, rate: int = 16000) -> None:
        self.window = int(window_s * rate)
        self.tolerance = int(TOLERANCE_S * rate)
        self.reset()

    def reset(self) -> None:
        self.idle_run = 0  # idle silence appended since the last audio arrived
        self.owed = 0  # silence to make up by leaving out quiet audio
        self.calm_since: int | None = None  # clock sample since which the timeline is in line

    def idle(self, samples: int) -> None:
        """The session appended ``samples`` of idle silence."""
        self.idle_run += samples

    def allowance(self, timeline: int, incoming: int, clock: int | None) -> int:
        """How many timeline samples of the ``incoming`` audio may be left out, given the
        timeline's length and where the clock says it should be (None: not live)."""
        if self.idle_run:
            # A short fill stood in for audio that was on its way (added to what is still
            # owed: late audio can land over several steps with small fills between); a long
            # one was a pause, after which nothing is owed.
            fits = self.idle_run <= self.window
            self.owed = min(self.owed + self.idle_run, self.window) if fits else 0
            self.idle_run = 0
            self.calm_since = None  # whether it was late shows from here on
        if not self.owed or clock is None:
            return 0
        return max(0, min(self.owed, timeline + incoming - clock - self.tolerance))

    def made_up(self, samples: int) -> None:
        self.owed = max(0, self.owed - samples)

    def settle(self, timeline: int, clock: int) -> None:
        """After each step's audio is in. A timeline that stays within the tolerance of the
        clock for ``window_s`` owes nothing: the audio came on time after all, or it has been
        made up. (A burst of late audio often lands over several steps, so one step in line
        proves nothing.)"""
        if timeline - clock > self.tolerance:
            self.calm_since = None
        elif self.calm_since is None:
            self.calm_since = clock
        elif clock - self.calm_since >= self.window:
            self.owed = 0


class NoiseFloor:
    """The input's background level, from which "quiet" is judged.

    The floor is a low percentile of the level of the last few seconds' 10 ms blocks (minimum
    statistics: the gaps between words reach the background even in continuous speech). Until
    a second of input has been seen, the threshold is the fixed :data:`QUIET_DBFS`."""

    def __init__(self, history_s: float = 5.0, percentile: float = 10.0) -> None:
        self.levels: collections.deque[float] = collections.deque(maxlen=int(history_s / BLOCK_S))
        self.percentile = percentile

    def push(self, chunk: np.ndarray, rate: int) -> None:
        """Take in the levels of a chunk of input (as :func:`drop_quiet` takes it)."""
        if chunk.shape[0]:
            self.levels.extend(block_levels(chunk, rate)[0].tolist())

    @property
    def floor_dbfs(self) -> float | None:
        if len(self.levels) < int(1.0 / BLOCK_S):
            return None
        return float(np.percentile(np.fromiter(self.levels, np.float64), self.percentile))

    @property
    def quiet_dbfs(self) -> float:
        """Blocks below this level may be left out."""
        floor = self.floor_dbfs
        if floor is None:
            return QUIET_DBFS
        return min(max(QUIET_DBFS, floor + NOISE_MARGIN_DB), QUIET_CEILING_DBFS)
