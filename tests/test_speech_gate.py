"""The speech gate (mmgt/audio/gate.py): streaming equals offline, speech passes, noise alone
becomes silence, and the shipped model's mouth follows speech in noise more closely with it."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

import mmgt.offline
from mmgt.audio import load_audio
from mmgt.audio.features import N_MELS, LightFeatureStream, extract_light_features
from mmgt.audio.gate import SpeechGate, _percentile, gate_features
from mmgt.avatar import BUNDLED_AVATAR
from mmgt.cli import main
from mmgt.drivers import make_driver
from mmgt.drivers.procedural import ProceduralDriver
from mmgt.drivers.smga import SMGADriver
from mmgt.errors import InputError
from mmgt.train.metrics import mouth_opening
from server.__main__ import parse_args, settings_from
from tests.engine_fakes import make_scheduler
from tests.helpers import synthetic_reference_pose

ENERGY, FLUX = N_MELS, N_MELS + 1  # indices of log_energy and spectral_flux


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(BUNDLED_AVATAR.with_name("speech_sample.wav"))


def pink(rng: np.random.Generator, n: int, dbfs: float) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(size=n))
    spectrum[1:] /= np.sqrt(np.arange(1, spectrum.size))  # 1/f power
    x = np.fft.irfft(spectrum, n)
    return (x / x.std() * 10 ** (dbfs / 20)).astype(np.float32)


def test_streaming_equals_offline_over_any_chunking(speech):
    rng = np.random.default_rng(0)
    noisy = speech + pink(rng, speech.size, -35)
    offline = gate_features(extract_light_features(noisy)).values
    stream, gate, out, i = LightFeatureStream(), SpeechGate(), [], 0
    while i < noisy.size:
        n = int(rng.integers(1, 6000))
        out.append(gate.push(stream.push(noisy[i : i + n]).values))
        i += n
    out.append(gate.push(stream.flush().values))
    np.testing.assert_array_equal(np.concatenate(out), offline)


def test_the_background_percentile_is_numpys():
    rng = np.random.default_rng(4)
    for n in (1, 2, 3, 24, 125):
        rows = rng.normal(size=(n, 40))
        np.testing.assert_allclose(_percentile(rows, 10.0), np.percentile(rows, 10.0, axis=0),
                                   rtol=0, atol=1e-12)  # fmt: skip


def test_speech_passes_and_noise_alone_becomes_silence(speech):
    clean = extract_light_features(speech).values
    gated = gate_features(extract_light_features(speech)).values
    loud = clean[:, ENERGY] > np.percentile(clean[:, ENERGY], 50)  # the louder half: speech
    keep = [c for c in range(clean.shape[1]) if c != FLUX]
    np.testing.assert_array_equal(gated[loud][:, keep], clean[loud][:, keep])  # bit for bit
    # The flux after a gated frame counts the rise from the quieter gated bands.
    assert np.all(gated[loud, FLUX] >= clean[loud, FLUX])
    rng = np.random.default_rng(1)
    for noise in (rng.normal(0, 10 ** (-45 / 20), 16000 * 6).astype(np.float32),
                  pink(rng, 16000 * 6, -30)):  # fmt: skip
        raw = extract_light_features(noise).values
        out = gate_features(extract_light_features(noise)).values
        settled = slice(38, None)  # after the first second (open) and the gate's release
        assert np.all(out[settled, ENERGY] < raw[settled, ENERGY] - 20 / 4.343)  # −20 dB
        at_floor = np.all(out[settled, :N_MELS] < np.log(1e-7), axis=1)  # digital silence's
        assert at_floor.mean() > 0.9


def test_the_shipped_model_follows_speech_in_noise_and_rests_in_noise(speech):
    """End to end with the default SMGA model (the numbers the gate was tuned on: README)."""
    ref = synthetic_reference_pose()
    gated, plain = make_driver("smga"), make_driver("smga", speech_gate=False)
    assert gated.speech_gate and not plain.speech_gate

    def mouth(driver: SMGADriver, audio: np.ndarray) -> np.ndarray:
        feats = extract_light_features(audio)
        if driver.speech_gate:
            feats = gate_features(feats)
        return mouth_opening(driver.generate(feats, ref).points, ref)

    rng = np.random.default_rng(2)
    clean = mouth(plain, speech)
    noisy = speech + pink(rng, speech.size, -30)
    r_plain = np.corrcoef(mouth(plain, noisy), clean)[0, 1]
    r_gated = np.corrcoef(mouth(gated, noisy), clean)[0, 1]
    assert r_gated > r_plain + 0.03
    hiss = pink(rng, 16000 * 6, -35)  # a fan's noise; the model rests closed in quieter hiss
    silence_level = np.median(mouth(plain, np.zeros_like(hiss)))
    assert np.median(mouth(gated, hiss)) < silence_level + 0.03  # closed, as on silence
    assert np.median(mouth(plain, hiss)) > silence_level + 0.08  # parted without the gate


def test_where_the_gate_is_applied(speech):
    # A driver that asks for it gets gated features in the live scheduler, equal to offline.
    driver = ProceduralDriver()
    driver.speech_gate = True
    sched, _ = make_scheduler(driver=driver)
    rng = np.random.default_rng(3)
    noisy = speech[: 16000 * 4] + pink(rng, 16000 * 4, -35)
    for i in range(0, noisy.size, 1000):
        sched.push_audio(noisy[i : i + 1000], 16000, 1, None)
    expected = gate_features(extract_light_features(noisy)).values
    n = len(sched._feat)
    assert n > 90
    np.testing.assert_array_equal(sched._feat, expected[:n])
    assert make_scheduler()[0]._gate is None  # the procedural driver does not ask
    # Only on light features; the flags that turn it off.
    with pytest.raises(InputError, match="light-v1"):
        SMGADriver(make_driver("smga").model, feature_kind="wavlm-edge", speech_gate=True)
    assert settings_from(parse_args(["--no-speech-gate"])).driver_options["speech_gate"] is False
    assert "speech_gate" not in settings_from(parse_args([])).driver_options


@pytest.mark.parametrize("flag", [[], ["--no-speech-gate"]])
def test_render_gates_unless_told_not_to(tmp_path, monkeypatch, speech, flag):
    calls = []
    monkeypatch.setattr(mmgt.offline, "gate_features", lambda f: calls.append(f) or f)
    clip = tmp_path / "clip.wav"
    sf.write(clip, speech[:32000], 16000)
    args = ["render", "--audio", str(clip), "--out", str(tmp_path / "o.mp4"), "--size", "128",
            "-q", "--driver", "smga", *flag]  # fmt: skip
    assert main(args) == 0
    assert len(calls) == (0 if flag else 1)
