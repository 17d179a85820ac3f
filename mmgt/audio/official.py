"""The official stage-1 (SMGA) audio condition: WavLM last layer ‖ 35 EDGE/librosa features.

What the official pipeline does per 3.2 s clip (fixture README H.1, H.3):

* **EDGE baseline** (35 values per 25 fps frame): ``librosa.load(path, sr=12800)`` (soxr HQ),
  hop 512, librosa defaults otherwise (n_fft 2048, centred frames): [0] onset strength,
  [1:21] MFCC(20), [21:33] chroma CENS(12), [33] one-hot of ``onset_detect`` on that envelope,
  [34] one-hot of ``beat_track(envelope, sr=12800, hop 512, start_bpm, tightness=100)`` where
  ``start_bpm = tempo(y)[0]`` of a *second* load at librosa's default 22.05 kHz. The 81 rows
  of a 3.2 s clip are chopped to 80.
* **WavLM** (D = 1024 for WavLM-Large): the 16 kHz signal is normalised over the whole utterance
  (``F.layer_norm(wav, wav.shape)``: no affine, eps 1e-5, not the wav2vec2 formula); the final
  layer after the encoder's final LayerNorm gives N frames at 50 Hz; the last frame is copied
  (N + 1) and ``F.interpolate(linear, align_corners=True)`` takes it to ceil((N + 1) / 2) rows.
* The condition is ``concat([wavlm, edge], axis=1)``, (80, D + 35), without normalisation.

Where we generalise: the official code asserts 80 frames (3.2 s clips); here any length works.
The output has T = ceil(n / 640) rows for n samples at 16 kHz (the 25 fps video frames the audio
touches). Each stream is fitted to T independently by dropping extra trailing rows or repeating
its last row (:func:`fit_rows`); for 16 kHz input EDGE has T or T + 1 rows and WavLM T − 1 or
T (checked for every n < 200000). Inputs shorter than WavLM's receptive field (400 samples) are
zero-padded after normalisation. Both streams keep the official frame phase: EDGE row i is
centred at 40·i ms, WavLM row i lies near 50 Hz frame 2i. WavLM runs on the whole input at once
(attention memory grows as N²); callers wanting the official behaviour split into 3.2 s clips.

Live use needs a windowed / causal approximation: the whole-utterance layer norm, WavLM's
bidirectional attention, the centred STFTs and the global tempo estimate all look at the whole
signal. That approximation is NOT implemented here (it belongs to the live engine).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mmgt.audio.decode import SAMPLE_RATE
from mmgt.errors import AudioError
from mmgt.types import FPS, AudioFeatures

if TYPE_CHECKING:
    from transformers import WavLMModel

KIND = "official-wavlm-edge"
EDGE_DIM = 35
EDGE_SR = 12800  # 25 fps × hop 512
EDGE_HOP = 512
TEMPO_SR = 22050  # librosa.load's default rate, used by the official tempo estimate
WAVLM_MIN_SAMPLES = 400  # receptive field of the conv feature extractor
HOP_16K = SAMPLE_RATE // FPS  # 640 samples per video frame


def _mono(samples: np.ndarray) -> np.ndarray:
    y = np.asarray(samples, dtype=np.float32)
    if y.ndim != 1 or y.size == 0:
        raise AudioError(f"expected non-empty mono samples (n,), got shape {y.shape}")
    if not np.isfinite(y).all():
        raise AudioError("audio contains NaN or infinite samples")
    return y


def resample_like_librosa(samples: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """``librosa.load(sr=target_sr)``'s resampling: soxr 'HQ', length ceil(n · target / orig)."""
    import soxr

    y = _mono(samples)
    if orig_sr == target_sr:
        return y
    out = np.asarray(soxr.resample(y, orig_sr, target_sr, quality="HQ"), dtype=np.float32)
    n = math.ceil(y.size * target_sr / orig_sr)
    return np.pad(out[:n], (0, max(0, n - out.size)))


def edge_features_from(y_12800: np.ndarray, y_22050: np.ndarray) -> np.ndarray:
    """The 35 EDGE features of the 12.8 kHz signal, (1 + len // 512, 35) float32, unchopped.

    ``y_22050`` is the same audio at 22.05 kHz; only the start-bpm estimate uses it.
    """
    import librosa

    y, sr, hop = _mono(y_12800), EDGE_SR, EDGE_HOP
    with warnings.catch_warnings():  # very short inputs: "n_fft=… is too large", empty tuning
        warnings.filterwarnings("ignore", message=r"n_fft=\d+ is too large", category=UserWarning)
        warnings.filterwarnings("ignore", message="Trying to estimate tuning", category=UserWarning)
        envelope = librosa.onset.onset_strength(y=y, sr=sr)  # (T,)
        mfcc = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=20).T  # (T, 20)
        chroma = librosa.feature.chroma_cens(y=y, sr=sr, hop_length=hop, n_chroma=12).T  # (T, 12)
        onsets = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr, hop_length=hop)
        start_bpm = librosa.feature.tempo(y=_mono(y_22050), sr=TEMPO_SR)[0]
        _, beats = librosa.beat.beat_track(
            onset_envelope=envelope, sr=sr, hop_length=hop, start_bpm=start_bpm, tightness=100
        )
    onset_hot = np.zeros_like(envelope, dtype=np.float32)
    onset_hot[onsets] = 1.0
    beat_hot = np.zeros_like(envelope, dtype=np.float32)
    beat_hot[beats] = 1.0
    cols = [envelope[:, None], mfcc, chroma, onset_hot[:, None], beat_hot[:, None]]
    return np.concatenate(cols, axis=1).astype(np.float32)  # (T, 35)


def edge_features(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """EDGE features of mono float samples at their original rate, (T_full, 35) float32.

    Resamples to 12.8 and 22.05 kHz as ``librosa.load`` does, then :func:`edge_features_from`.
    """
    y = _mono(samples)
    return edge_features_from(
        resample_like_librosa(y, sample_rate, EDGE_SR),
        resample_like_librosa(y, sample_rate, TEMPO_SR),
    )


def wavlm_normalize(samples16k: np.ndarray) -> np.ndarray:
    """Whole-utterance ``F.layer_norm(wav, wav.shape)`` (no affine, eps 1e-5), float32."""
    wav = torch.from_numpy(_mono(samples16k))
    return F.layer_norm(wav, wav.shape).numpy()


def wavlm_features_50hz(model: WavLMModel, samples16k: np.ndarray) -> np.ndarray:
    """Final WavLM layer (after the encoder's final LayerNorm) at 50 Hz, (N, D) float32.

    Normalises with :func:`wavlm_normalize` first; pads inputs shorter than 400 samples with
    zeros after normalisation.
    """
    if getattr(model.config, "add_adapter", False):
        raise ValueError("a WavLM with an adapter does not give the official features")
    wav = wavlm_normalize(samples16k)
    wav = np.pad(wav, (0, max(0, WAVLM_MIN_SAMPLES - wav.size)))
    # For do_stable_layer_norm (WavLM-Large, layer_norm_first) transformers applies
    # encoder.layer_norm after the last layer, so last_hidden_state is exactly the official
    # extract_features output; without an adapter nothing follows it.
    with torch.inference_mode():
        out = model(torch.from_numpy(wav)[None]).last_hidden_state  # (1, N, D)
    return out[0].float().numpy()


def to_25fps(feats_50hz: np.ndarray) -> np.ndarray:
    """50 Hz → 25 fps: repeat the last frame, linear align-corners resize to ceil((N+1)/2)."""
    x = torch.from_numpy(np.asarray(feats_50hz, dtype=np.float32))  # (N, D)
    x = torch.cat([x, x[-1:]], dim=0).T[None]  # (1, D, N + 1)
    size = math.ceil(x.shape[-1] / 2)
    return F.interpolate(x, size=size, mode="linear", align_corners=True)[0].T.numpy()  # (M, D)


def wavlm_features_25fps(model: WavLMModel, samples16k: np.ndarray) -> np.ndarray:
    """Official WavLM features at 25 fps, (ceil((N + 1) / 2), D) float32."""
    return to_25fps(wavlm_features_50hz(model, samples16k))


def num_frames(n_samples16k: int) -> int:
    """Video frames (25 fps) touched by ``n`` samples at 16 kHz: ceil(n / 640)."""
    return -(-int(n_samples16k) // HOP_16K)


def fit_rows(values: np.ndarray, rows: int) -> np.ndarray:
    """Drop trailing rows or repeat the last row so that ``values`` has exactly ``rows`` rows."""
    if len(values) >= rows:
        return values[:rows]
    return np.concatenate([values, np.repeat(values[-1:], rows - len(values), axis=0)])


def stage1_features(
    samples16k: np.ndarray,
    wavlm_model: WavLMModel,
    *,
    original: np.ndarray | None = None,
    original_rate: int | None = None,
) -> AudioFeatures:
    """The official stage-1 condition, (T, D + 35) with T = ceil(len(samples16k) / 640).

    WavLM sees ``samples16k``; EDGE sees ``original`` at ``original_rate`` when given (as the
    official code loads the user's file at 12.8 / 22.05 kHz), else ``samples16k``. Each stream
    is fitted to T with :func:`fit_rows` (see the module docstring).
    """
    wav = _mono(samples16k)
    if (original is None) != (original_rate is None):
        raise ValueError("pass original and original_rate together")
    rows = num_frames(wav.size)
    wavlm = fit_rows(wavlm_features_25fps(wavlm_model, wav), rows)  # (T, D)
    if original is None:
        edge = edge_features(wav, SAMPLE_RATE)
    else:
        edge = edge_features(original, int(original_rate))  # type: ignore[arg-type]
    edge = fit_rows(edge, rows)  # (T, 35)
    return AudioFeatures(np.concatenate([wavlm, edge], axis=1), FPS, 0, KIND)
