"""Catching up after late audio, so live latency does not ratchet up over a long session.

A live session keeps its timeline moving with the clock: when no audio has arrived, it appends
silence (idle). If the audio was only late (network jitter, a stalled client or event loop), it
then arrives in a burst and lands *after* that silence, so every later frame is shown that much
later, and each hiccup adds to the delay for the rest of the session (measured before this
module: +0.6 to +0.7 s after 30 minutes, ``bench/bench_soak.py``). Jitter buffers solve the same
problem by playing faster for a while; here the silence is made up by leaving out quiet 10 ms
blocks of the audio that follows, until the timeline is back with the clock. Speech is never
dropped, and quiet blocks are common even within speech, so the catch-up takes a few seconds.

What counts as quiet follows the microphone (:class:`NoiseFloor`): below −40 dBFS always, and
up to 6 dB above the input's own background level (but never above −30 dBFS), so a noisy room
catches up too, while speech, which stands well above its background, is kept.

:class:`LateAudio` keeps the books; :func:`drop_quiet` does the cutting. Only short idle fills
(up to ``window_s``) count: after a longer silence the next audio is a new utterance, not a
late one, and a burst that runs further ahead than the silence it follows (a TTS client sending
faster than real time) keeps everything beyond that silence.
"""

from __future__ import annotations

import collections

import numpy as np

BLOCK_S = 0.01  # the unit that may be left out
QUIET_DBFS = -40.0  # RMS below this is always quiet (a quiet room is -50 to -60 dBFS)
NOISE_MARGIN_DB = 6.0  # a block within this of the background level is quiet too…
QUIET_CEILING_DBFS = -30.0  # …unless it is louder than this (too noisy to tell speech apart)
TOLERANCE_S = 0.1  # the timeline may run this far ahead of the clock before catching up


def block_levels(chunk: np.ndarray, rate: int) -> tuple[np.ndarray, int]:
    """RMS level in dBFS of each whole 10 ms block of ``chunk`` ((n,) or (n, channels), float
    or int16 at ``rate``), and the block length in samples."""
    block = max(1, int(rate * BLOCK_S))
    whole = (chunk.shape[0] // block) * block
    x = np.asarray(chunk[:whole], np.float32)
    if chunk.dtype == np.int16:
        x = x / 32768.0
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
