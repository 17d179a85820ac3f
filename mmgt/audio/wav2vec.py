"""Stage-2 audio condition: wav2vec2 hidden states at 25 fps, ±2-frame windows, audio tokens.

**Offline (official-compatible, fixture README H.2).** For n samples of 16 kHz mono audio:

1. normalise the whole utterance, ``(x − mean) / sqrt(var + 1e-7)`` in float32
   (``Wav2Vec2FeatureExtractor`` with ``do_normalize``; skipped if the loaded preprocessor
   config says ``do_normalize: false``);
2. ``seq_len = ceil(n / 640)`` video frames. ``pad_to_multiple=80`` reproduces the official
   offline padding: zeros appended *after* normalisation up to a multiple of 80 frames (the
   returned rows include the padded frames, as the official ``preprocess`` does);
3. the conv feature extractor (50 Hz) → ``F.interpolate(linear, align_corners=True)`` to
   ``seq_len`` rows *before* the transformer → ``feature_projection`` → encoder (pos-conv,
   LayerNorm, all layers), no attention mask; the outputs of all transformer layers
   (``hidden_states[1:]``, not the encoder input) → (seq_len, layers, C);
4. frame i takes frames i−2 … i+2 clamped to [0, S−1] → (S, 5, layers, C);
5. :class:`mmgt.models.audio_proj.AudioProjection` → (1, S, tokens, dim).

Inputs shorter than the conv receptive field (400 samples) are zero-padded after normalisation
(the official code would fail). The transformer submodules of a ``transformers.Wav2Vec2Model``
are called directly; the per-layer outputs are captured with forward hooks, because the
encoder of transformers 5 no longer returns hidden states itself.

**Live** (:class:`StreamingWav2Vec2`, :class:`StreamingAudioTokens`). The offline path looks at
the whole utterance; live it is approximated over a bounded window of 16 kHz audio:

* each computation covers ``[first − 2 − context, last + lookahead)`` frames, where
  ``[first, last)`` are the frames emitted now (at most ``max_step_frames`` per computation).
  Window edges are multiples of 640 samples, so row k of a window is exactly the global frame
  ``start + k`` (the same phase as an offline run on a multiple of 640 samples);
* statistics: the input normalisation mean/variance, and the per-channel GroupNorm over time
  in wav2vec2-base's first conv layer, are those of that window, not of the whole utterance;
* attention: the transformer sees ``context_s`` of look-behind only, and ``lookahead_frames``
  of future audio (more for the earlier frames of a push that delivers several), while offline
  attention sees the whole utterance; the newest frames lack the right context;
* the ±2 window clamps at the newest frame of that computation: with ``lookahead_frames = 0``
  the newest frame's +1/+2 neighbours are the frame itself; ``lookahead_frames >= 2`` gives the
  offline window shape, at 40 ms of latency per look-ahead frame;
* phase: live rows are always conv frame 2k (window lengths are multiples of 640 samples);
  offline, a length that is not a multiple of 640 blends neighbouring conv frames slightly;
* :meth:`StreamingWav2Vec2.flush` emits the held-back frames, including a final partial
  frame, so a stream yields exactly ``ceil(n / 640)`` frames, each once and in order.

A window that covers the whole utterance (``context_s`` and ``lookahead_frames`` at least its
length) reproduces the offline rows exactly. How close a shorter one comes depends on the model;
tests/test_wav2vec.py measures it for the tiny random fixture model (far more context-sensitive
than a trained one, whose attention is mostly local).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mmgt.audio.decode import SAMPLE_RATE
from mmgt.audio.official import _mono
from mmgt.types import FPS

if TYPE_CHECKING:
    from transformers import Wav2Vec2Model

    from mmgt.models.audio_proj import AudioProjection
    from mmgt.runtime import Runner

HOP = SAMPLE_RATE // FPS  # 640 samples per 25 fps frame
MIN_SAMPLES = 400  # receptive field of the wav2vec2 conv feature extractor
RADIUS = 2  # the official window: frames i−2 … i+2
EPS = 1e-7  # Wav2Vec2FeatureExtractor's variance epsilon


def normalize(samples16k: np.ndarray) -> np.ndarray:
    """Whole-signal zero mean / unit variance, as ``Wav2Vec2FeatureExtractor`` (float32)."""
    x = _mono(samples16k)
    return (x - x.mean()) / np.sqrt(x.var() + np.float32(EPS))


def num_frames(n_samples: int, pad_to_multiple: int | None = None) -> int:
    """``ceil(n / 640)`` frames, rounded up to a multiple of ``pad_to_multiple`` if given."""
    frames = math.ceil(n_samples / HOP)
    if pad_to_multiple:
        frames = math.ceil(frames / pad_to_multiple) * pad_to_multiple
    return frames


@dataclass(frozen=True)
class Wav2Vec2Trace:
    """Every intermediate of the official forward (batch dimension dropped), for checking."""

    conv: np.ndarray  # (T50, C_conv) conv features at 50 Hz
    conv_frames: np.ndarray  # (S, C_conv) interpolated to the video frames
    projected: np.ndarray  # (S, C) feature_projection output
    hidden0: np.ndarray  # (S, C) encoder input of layer 1 (not part of the output)
    layers: np.ndarray  # (S, layers, C) outputs of all transformer layers


@torch.no_grad()
def run_wav2vec2(model: Wav2Vec2Model, input_values: np.ndarray, seq_len: int) -> Wav2Vec2Trace:
    """The official modified forward on already normalised ``input_values`` (n,).

    ``layers`` are the raw layer outputs, i.e. transformers' ``hidden_states[1:]`` for post-LN
    models such as wav2vec2-base (a stable-layer-norm model's last row would lack the final
    LayerNorm that transformers applies).
    """
    p = next(model.parameters())
    x = torch.as_tensor(np.asarray(input_values), dtype=p.dtype, device=p.device)[None]  # (1, n)
    conv = model.feature_extractor(x)  # (1, C_conv, T50)
    frames = F.interpolate(conv, size=seq_len, mode="linear", align_corners=True)  # (1, Cc, S)
    projected = model.feature_projection(frames.transpose(1, 2))  # (1, S, C)
    if isinstance(projected, tuple):  # (hidden, normed hidden) in transformers 4.x and 5.x
        projected = projected[0]
    captured: list[torch.Tensor] = []
    layers = model.encoder.layers
    hooks = [layers[0].register_forward_pre_hook(lambda _m, args: captured.append(args[0]))]
    hooks += [  # layers return a tensor (transformers 5) or a tuple (4.x)
        layer.register_forward_hook(
            lambda _m, _a, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        for layer in layers
    ]
    try:
        model.encoder(projected)
    finally:
        for h in hooks:
            h.remove()
    if len(captured) != len(layers) + 1:
        raise RuntimeError(f"captured {len(captured) - 1} of {len(layers)} layer outputs")
    out = [t[0].float().cpu().numpy() for t in captured]  # each (S, C)
    return Wav2Vec2Trace(
        conv=conv[0].T.float().cpu().numpy(),
        conv_frames=frames[0].T.float().cpu().numpy(),
        projected=projected[0].float().cpu().numpy(),
        hidden0=out[0],
        layers=np.stack(out[1:], axis=1),
    )


def model_input(
    model: Wav2Vec2Model, samples16k: np.ndarray, seq_len: int | None = None,
    pad_to_multiple: int | None = None,
) -> tuple[np.ndarray, int]:  # fmt: skip
    """Normalised (per the model's ``do_normalize``), zero-padded input and its frame count."""
    x = normalize(samples16k) if getattr(model.config, "do_normalize", True) else _mono(samples16k)
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    frames = seq_len if seq_len is not None else num_frames(x.size)
    padded = num_frames(frames * HOP, pad_to_multiple)  # frames rounded up to the multiple
    pad = max((padded - frames) * HOP, MIN_SAMPLES - x.size)  # zeros after normalisation
    return (np.pad(x, (0, pad)) if pad > 0 else x), padded


def hidden_states(
    model: Wav2Vec2Model, samples16k: np.ndarray, seq_len: int | None = None,
    *, pad_to_multiple: int | None = None,
) -> np.ndarray:  # fmt: skip
    """(S, layers, C) float32: all transformer layers at 25 fps, S = ``seq_len`` or ceil(n/640).

    A ``seq_len`` other than ceil(n/640) stretches the audio in time, as the official forward's
    ``seq_len`` argument does.
    """
    x, frames = model_input(model, samples16k, seq_len, pad_to_multiple)
    return run_wav2vec2(model, x, frames).layers


def window_index(frames: int, radius: int = RADIUS) -> np.ndarray:
    """(S, 2·radius + 1) int64: frames i−radius … i+radius clamped to [0, S−1]."""
    offsets = np.arange(-radius, radius + 1)
    return np.clip(np.arange(frames)[:, None] + offsets, 0, frames - 1).astype(np.int64)


def frame_windows(emb: np.ndarray, radius: int = RADIUS) -> np.ndarray:
    """(S, layers, C) → (S, 2·radius + 1, layers, C), the official ``process_audio_emb``."""
    return emb[window_index(len(emb), radius)]


@torch.no_grad()
def project(proj: AudioProjection | Runner, windows: np.ndarray) -> torch.Tensor:
    """(S, 5, layers, C) windows → (1, S, tokens, dim).

    ``proj`` is the module (output on its device and dtype) or a runner of its export
    (``windows`` → ``tokens``; ONNX Runtime, TensorRT), called on chunks of at most
    ``PER_FRAME_CHUNK`` frames (the projection is per frame, so chunks are exact)."""
    if not isinstance(proj, torch.nn.Module):
        from mmgt.models.stage2_steps import PER_FRAME_CHUNK

        x = torch.as_tensor(windows, dtype=torch.float32)[None]  # (1, S, 5, layers, C)
        chunks = [proj(windows=x[:, k : k + PER_FRAME_CHUNK])["tokens"]
                  for k in range(0, x.shape[1], PER_FRAME_CHUNK)]  # fmt: skip
        return torch.cat(chunks, dim=1)
    p = next(proj.parameters())
    x = torch.as_tensor(windows, device=p.device, dtype=p.dtype)[None]  # (1, S, 5, layers, C)
    return proj(x)


def _radius(proj: AudioProjection | Runner) -> int:
    return proj.config.window // 2 if isinstance(proj, torch.nn.Module) else RADIUS


def audio_tokens(
    model: Wav2Vec2Model, proj: AudioProjection | Runner, samples16k: np.ndarray,
    seq_len: int | None = None, *, pad_to_multiple: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """(1, S, tokens, dim): the whole offline path from 16 kHz samples to audio tokens."""
    emb = hidden_states(model, samples16k, seq_len, pad_to_multiple=pad_to_multiple)
    return project(proj, frame_windows(emb, _radius(proj)))


class StreamingWav2Vec2:
    """Live ±radius windows of wav2vec2 hidden states (see the module docstring for how they
    differ from offline). :meth:`push` takes 16 kHz samples of any length and returns the
    (k, 2·radius + 1, layers, C) windows of the frames that became ready, in order. A push of
    many frames is computed in steps of at most ``max_step_frames`` to bound the window."""

    def __init__(
        self, model: Wav2Vec2Model, *, context_s: float = 2.0, lookahead_frames: int = 0,
        radius: int = RADIUS, max_step_frames: int = 25,
    ) -> None:  # fmt: skip
        if context_s < 0 or lookahead_frames < 0 or radius < 0 or max_step_frames < 1:
            raise ValueError("context_s, lookahead_frames, radius >= 0; max_step_frames >= 1")
        self.model = model
        self.context_frames = math.ceil(context_s * FPS)
        self.lookahead_frames = lookahead_frames
        self.radius = radius
        self.max_step_frames = max_step_frames
        self.reset()

    def reset(self) -> None:
        """Start a new utterance."""
        self._buf = np.zeros(0, np.float32)  # samples from global index self._buf_start on
        self._buf_start = 0
        self.samples_received = 0
        self.frames_emitted = 0  # index of the next frame to return

    def _embed(self, samples: np.ndarray) -> np.ndarray:
        """(ceil(n/640), layers, C) for one window, normalised with the window's statistics."""
        return hidden_states(self.model, samples)

    def push(self, samples16k: np.ndarray) -> np.ndarray:
        chunk = np.asarray(samples16k, dtype=np.float32)
        if chunk.size:  # (n,) mono
            self._buf = np.concatenate([self._buf, _mono(chunk)])
            self.samples_received += chunk.size
        ready = self.samples_received // HOP - self.lookahead_frames
        return self._emit(ready)

    def flush(self) -> np.ndarray:
        """The frames still held back (look-ahead, partial last frame); then :meth:`reset`."""
        out = self._emit(math.ceil(self.samples_received / HOP))
        self.reset()
        return out

    def _emit(self, ready: int) -> np.ndarray:
        rows: list[np.ndarray] = []
        while self.frames_emitted < ready:
            first = self.frames_emitted
            last = min(ready, first + self.max_step_frames)  # emit frames [first, last)
            start = max(0, first - self.radius - self.context_frames)  # window's first frame
            end = min(self.samples_received, (last + self.lookahead_frames) * HOP)  # sample
            emb = self._embed(self._buf[start * HOP - self._buf_start : end - self._buf_start])
            offsets = np.arange(-self.radius, self.radius + 1)
            idx = np.arange(first, last)[:, None] + offsets  # (k, 2r+1) global frames
            idx = np.clip(idx, 0, start + len(emb) - 1) - start  # rows of this window
            rows.append(emb[idx])  # (k, 2r+1, layers, C)
            self.frames_emitted = last
        keep = max(0, self.frames_emitted - self.radius - self.context_frames) * HOP
        if keep > self._buf_start:
            self._buf = self._buf[keep - self._buf_start :]
            self._buf_start = keep
        if rows:
            return np.concatenate(rows)
        cfg = self.model.config
        return np.zeros(
            (0, 2 * self.radius + 1, cfg.num_hidden_layers, cfg.hidden_size), np.float32
        )


class StreamingAudioTokens:
    """:class:`StreamingWav2Vec2` followed by the audio projection: one (1, tokens, dim) tensor
    per ready frame (the live renderer's audio condition)."""

    def __init__(
        self, model: Wav2Vec2Model, proj: AudioProjection | Runner, *, context_s: float = 2.0,
        lookahead_frames: int = 0, max_step_frames: int = 25,
    ) -> None:  # fmt: skip
        self.proj = proj
        self.features = StreamingWav2Vec2(
            model, context_s=context_s, lookahead_frames=lookahead_frames,
            radius=_radius(proj), max_step_frames=max_step_frames,
        )  # fmt: skip

    def _tokens(self, windows: np.ndarray) -> list[torch.Tensor]:
        return list(project(self.proj, windows).unbind(1)) if len(windows) else []

    def push(self, samples16k: np.ndarray) -> list[torch.Tensor]:
        return self._tokens(self.features.push(samples16k))

    def flush(self) -> list[torch.Tensor]:
        return self._tokens(self.features.flush())
