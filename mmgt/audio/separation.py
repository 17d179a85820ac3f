"""Vocal separation before wav2vec2, as the official stage-2 pipeline does it.

The official ``audio2vid`` runs the speech through ``audio-separator`` 0.17.2 with the MDX-Net
model ``Kim_Vocal_2.onnx`` (``WEIGHTS/audio_separator/``), keeps the vocals, resamples them to
16 kHz with ffmpeg and only then computes the wav2vec2 features. This module runs the same
steps from the user's copy of the model, so music or noise under the speech does not reach
the audio attention:

1. the audio at 44.1 kHz in stereo (mono is duplicated; soxr, as librosa loads it), its peak
   brought down to 0.9 if above;
2. MDX demixing: chunks of 1024 × 255 samples with 3840 samples of trim on either side, 25 %
   overlap, a Hann window over each chunk's output (overlap-add, divided by the window sum);
   per chunk the STFT (n_fft 7680, hop 1024, periodic Hann, centred) keeps the first 3072 bins
   as 4 channels (left re, left im, right re, right im), zeroes the lowest 3 bins, runs the
   model and inverts it; the result is scaled by the model's compensation 1.009;
3. the vocals' peak brought down to 0.9 if above, written as 16-bit samples (truncated),
   resampled to 16 kHz (libswresample, as ffmpeg) and mixed to mono (as librosa loads it).

Step 2 is checked against the audio-separator code on a stand-in model with the released
file's signature (``tests/test_separation.py``). The model constants are Kim_Vocal_2's, from
audio-separator's model table (looked up there by the file's hash at run time).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import soxr
import torch

from mmgt.errors import WeightsError

SEPARATOR_FILE = Path("audio_separator") / "Kim_Vocal_2.onnx"
SAMPLE_RATE = 44100
N_FFT = 7680
DIM_F = 3072  # frequency bins the model sees
DIM_T = 256  # STFT frames per chunk (2 ** mdx_dim_t_set 8)
HOP = 1024
SEGMENT = 256  # audio-separator's default segment size (= DIM_T: the ONNX model runs as is)
OVERLAP = 0.25
COMPENSATE = 1.009
PEAK = 0.9  # audio-separator's normalisation threshold
LOW_BINS = 3  # zeroed before the model
TRIM = N_FFT // 2
CHUNK = HOP * (SEGMENT - 1)
GEN = CHUNK - 2 * TRIM


def find_separator(weights_dir: str | os.PathLike[str]) -> Path | None:
    """``WEIGHTS/audio_separator/Kim_Vocal_2.onnx`` if it is there."""
    path = Path(weights_dir) / SEPARATOR_FILE
    return path if path.is_file() else None


def limit_peak(wave: np.ndarray, peak: float = PEAK) -> np.ndarray:
    """Scale ``wave`` in place so that its largest magnitude is at most ``peak``."""
    top = np.abs(wave).max()
    if top > peak:
        wave *= peak / top
    return wave


class Spectrogram:
    """The chunk STFT the MDX models take: (B, 2, CHUNK) ↔ (B, 4, DIM_F, DIM_T)."""

    def __init__(self) -> None:
        self.window = torch.hann_window(N_FFT, periodic=True)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        b = wave.shape[0]
        spec = torch.stft(wave.reshape(-1, wave.shape[-1]), n_fft=N_FFT, hop_length=HOP,
                          window=self.window, center=True, return_complex=True)  # fmt: skip
        spec = torch.view_as_real(spec).permute(0, 3, 1, 2)  # (2B, re/im, F, T)
        return spec.reshape(b, 4, N_FFT // 2 + 1, -1)[:, :, :DIM_F]

    def inverse(self, spec: torch.Tensor) -> torch.Tensor:
        b, _, f, t = spec.shape
        full = torch.cat([spec, spec.new_zeros(b, 4, N_FFT // 2 + 1 - f, t)], 2)
        full = full.reshape(b * 2, 2, N_FFT // 2 + 1, t).permute(0, 2, 3, 1)
        wave = torch.istft(torch.complex(full[..., 0], full[..., 1]), n_fft=N_FFT,
                           hop_length=HOP, window=self.window, center=True)  # fmt: skip
        return wave.reshape(b, 2, -1)


def demix(mix: np.ndarray, model, spectrogram: Spectrogram | None = None) -> np.ndarray:  # noqa: ANN001
    """(2, N) float32 stereo at 44.1 kHz → (2, N) separated source (× the compensation).

    ``model`` maps a (1, 4, DIM_F, DIM_T) float32 array to one of the same shape.
    """
    spectrogram = spectrogram or Spectrogram()
    n = mix.shape[-1]
    pad = GEN + TRIM - n % GEN
    mixture = np.concatenate(
        [np.zeros((2, TRIM), np.float32), mix, np.zeros((2, pad), np.float32)], 1
    )
    step = int((1 - OVERLAP) * CHUNK)
    result = np.zeros((1, 2, mixture.shape[-1]), np.float32)
    divider = np.zeros_like(result)
    for start in range(0, mixture.shape[-1], step):
        end = min(start + CHUNK, mixture.shape[-1])
        size = end - start
        window = np.tile(np.hanning(size)[None, None], (1, 2, 1))
        part = mixture[:, start:end]
        if size < CHUNK:
            part = np.concatenate([part, np.zeros((2, CHUNK - size), np.float32)], -1)
        with torch.no_grad():
            spec = spectrogram(torch.from_numpy(np.ascontiguousarray(part, np.float32))[None])
            spec[:, :, :LOW_BINS] = 0
            pred = torch.from_numpy(np.asarray(model(spec.numpy())))
            wave = spectrogram.inverse(pred).numpy()
        wave[..., :size] *= window
        divider[..., start:end] += window
        result[..., start:end] += wave[..., :size]
    with np.errstate(invalid="ignore"):  # 0/0 only where every window is 0: in the trim
        out = (result / divider)[0, :, TRIM:-TRIM][:, :n]
    return out * COMPENSATE


def to_16k_mono(stereo: np.ndarray) -> np.ndarray:
    """(2, N) at 44.1 kHz → 16-bit samples → 16 kHz (libswresample) → mono float32."""
    import av

    pcm = (stereo.T * 32767).astype(np.int16)  # (N, 2), truncated as audio-separator writes
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm).reshape(1, -1), format="s16",
                                       layout="stereo")  # fmt: skip
    frame.sample_rate = SAMPLE_RATE
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=16000)
    chunks = [f.to_ndarray().reshape(-1, 2) for f in resampler.resample(frame)]
    chunks += [f.to_ndarray().reshape(-1, 2) for f in resampler.resample(None)]
    out = np.concatenate(chunks).astype(np.float32) / 32768.0  # (M, 2), as librosa reads s16
    return out.mean(axis=1)


class VocalSeparator:
    """Kim_Vocal_2 (MDX-Net ONNX) in ONNX Runtime; :meth:`vocals` gives 16 kHz mono speech."""

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "cpu", threads: int | None = None
    ) -> None:
        from mmgt.runtime import foreign_session

        self._session = foreign_session(path, device=device, threads=threads)
        shape = list(self._session.get_inputs()[0].shape)
        if shape[1:] != [4, DIM_F, DIM_T]:
            raise WeightsError(f"{path}: input {shape}, expected (1, 4, {DIM_F}, {DIM_T})")
        self._input = self._session.get_inputs()[0].name
        self._spectrogram = Spectrogram()
        self._lock = threading.Lock()

    def _model(self, spec: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: spec.astype(np.float32)})[0]

    def vocals(self, samples: np.ndarray, rate: int) -> np.ndarray:
        """Mono float32 audio at ``rate`` → the separated vocals, 16 kHz mono float32."""
        mix = soxr.resample(np.asarray(samples, np.float32), rate, SAMPLE_RATE, quality="HQ")
        mix = limit_peak(np.stack([mix, mix]).astype(np.float32))
        with self._lock:
            source = demix(mix, self._model, self._spectrogram)
        return to_16k_mono(limit_peak(source))
