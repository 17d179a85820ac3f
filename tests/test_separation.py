"""The official vocal separation (Kim_Vocal_2 via audio-separator's MDX path) before wav2vec2.

The released ONNX file cannot be downloaded here; audio-separator 0.17.2 was run once on a
seeded stand-in with the same signature (``scripts/separation_fixture.py``), and its output is
in ``tests/fixtures/official/separation.npz``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from mmgt.audio import separation as sep
from mmgt.errors import WeightsError
from tests.standin_models import identity_separator, separation_mix, separator_model

FIXTURE = Path(__file__).parent / "fixtures" / "official" / "separation.npz"


def _runner(model):  # noqa: ANN001, ANN202
    session = ort.InferenceSession(model.SerializeToString())
    return lambda spec: session.run(None, {"input": spec})[0]


def test_demixing_equals_audio_separator() -> None:
    golden = np.load(FIXTURE)
    mix = sep.limit_peak(separation_mix())  # as audio-separator normalises the loaded mix
    source = sep.demix(mix, _runner(separator_model()))
    idx = golden["index"]
    assert source.shape == mix.shape
    np.testing.assert_allclose(source[:, idx], golden["source"], rtol=0, atol=1e-6)
    written = (sep.limit_peak(source.copy()).T * 32767).astype(np.int16).T  # the vocals file
    np.testing.assert_array_equal(written[:, idx], golden["vocals_int16"])
    # The fixture covers every chunk seam (three chunks with 25 % overlap) and both ends.
    assert idx.max() == mix.shape[1] - 1 and len(idx) > 3000


def test_a_transparent_model_gives_the_speech_back_in_time(tmp_path: Path) -> None:
    """Through an identity model the whole path (44.1 kHz, chunks, STFT and back, 16-bit,
    16 kHz) returns the speech × the model's compensation, without delay."""
    import soundfile as sf

    path = tmp_path / "Kim_Vocal_2.onnx"
    path.write_bytes(identity_separator().SerializeToString())
    speech, rate = sf.read(Path(__file__).parents[1] / "mmgt/assets/speech_sample.wav",
                           dtype="float32")  # fmt: skip
    speech = speech[: int(7 * rate)] * np.float32(0.5)
    vocals = sep.VocalSeparator(path).vocals(speech, rate)
    import soxr

    want = soxr.resample(speech, rate, 16000, quality="HQ")
    assert abs(vocals.size - want.size) <= 2
    n = min(vocals.size, want.size)
    gain = float(vocals[:n] @ want[:n] / (want[:n] @ want[:n]))
    assert gain == pytest.approx(sep.COMPENSATE, abs=0.01)
    residual = vocals[:n] - gain * want[:n]
    assert np.sqrt(np.mean(residual**2)) < 0.01 * np.sqrt(np.mean(want[:n] ** 2)) + 1e-4
    lags = [float(vocals[1000 : n - 1000] @ want[1000 + k : n - 1000 + k]) for k in (-1, 0, 1)]
    assert int(np.argmax(lags)) == 1  # aligned to the sample


def test_bad_separator_files_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(WeightsError, match="ONNX Runtime cannot load it"):
        sep.VocalSeparator(bad)
    from tests.standin_models import pose_model

    other = tmp_path / "other.onnx"
    other.write_bytes(pose_model().SerializeToString())
    with pytest.raises(WeightsError, match="expected"):
        sep.VocalSeparator(other)
    assert sep.find_separator(tmp_path) is None
