"""Voice activity from Silero VAD (its ONNX model ships inside the ``silero-vad`` wheel).

One ONNX Runtime session is shared read-only by all streams (``InferenceSession.run`` is
thread-safe); each :class:`VoiceActivity` keeps its own recurrent state and context, so sessions
are independent. Decisions use hysteresis: speech starts when the probability reaches
``threshold`` and ends after ``min_silence_ms`` below ``threshold − 0.15`` (as Silero's own
``get_speech_timestamps``).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmgt.errors import MissingDependencyError

SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous chunk prepended to each call


@functools.cache
def _session():  # noqa: ANN202 - onnxruntime type
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or spec.origin is None:
        raise MissingDependencyError("silero-vad is not installed (pip install silero-vad)")
    path = Path(spec.origin).parent / "data" / "silero_vad.onnx"
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass(frozen=True, slots=True)
class VadChange:
    """Speech began (``speech``) or ended at input sample ``sample`` (16 kHz timeline)."""

    sample: int
    speech: bool
    probability: float


class VoiceActivity:
    """Streaming speech/silence decisions over 16 kHz mono float audio."""

    def __init__(
        self, threshold: float = 0.5, min_silence_ms: float = 250.0, min_speech_ms: float = 64.0
    ) -> None:
        self.threshold = threshold
        self.neg_threshold = max(threshold - 0.15, 0.01)
        self._min_silence = int(min_silence_ms * SAMPLE_RATE / 1000)
        self._min_speech = int(min_speech_ms * SAMPLE_RATE / 1000)
        self._model = _session()
        self.reset()

    def reset(self, position: int = 0) -> None:
        """Forget state; the next sample pushed is at ``position`` of the timeline."""
        self._state = np.zeros((2, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._pos = position  # timeline sample of _pending[0]
        self.speech = False
        self.probability = 0.0
        self._below_since: int | None = None
        self._above_since: int | None = None

    def push(self, samples: np.ndarray) -> list[VadChange]:
        """Add (n,) float32 samples; return the state changes they caused."""
        self._pending = np.concatenate([self._pending, np.asarray(samples, np.float32)])
        changes: list[VadChange] = []
        while self._pending.size >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            p = self._infer(chunk)
            change = self._decide(p, self._pos)
            self._pos += CHUNK
            if change is not None:
                changes.append(change)
        return changes

    def _infer(self, chunk: np.ndarray) -> float:
        x = np.concatenate([self._context, chunk])[None]  # (1, 576)
        out, self._state = self._model.run(
            None, {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE, np.int64)}
        )
        self._context = chunk[-CONTEXT:]
        self.probability = float(out[0, 0])
        return self.probability

    def _decide(self, p: float, pos: int) -> VadChange | None:
        if not self.speech:
            if p < self.threshold:
                self._above_since = None
                return None
            if self._above_since is None:
                self._above_since = pos
            if pos + CHUNK - self._above_since >= self._min_speech:
                self.speech, self._below_since = True, None
                return VadChange(self._above_since, True, p)
            return None
        if p >= self.neg_threshold:
            self._below_since = None
            return None
        if self._below_since is None:
            self._below_since = pos
        if pos + CHUNK - self._below_since >= self._min_silence:
            self.speech, self._above_since = False, None
            return VadChange(self._below_since, False, p)
        return None
