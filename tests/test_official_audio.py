"""Official stage-1 audio features (EDGE/librosa + WavLM) against the golden fixtures.

Fixture README sections H.1, H.3, I.1 items 4 and 6, I.2 (tolerances used below).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmgt.audio import official
from mmgt.errors import WeightsError
from mmgt.weights.wavlm import load_wavlm, wavlm_from_original

FIX = Path(__file__).parent / "fixtures" / "official"


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(FIX / "audio_features.npz") as data:
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in data.items()}


@pytest.fixture(scope="module")
def wave(arrays) -> np.ndarray:
    return arrays["wave_int16"].astype(np.float32) / 32768


@pytest.fixture(scope="module")
def tiny_cfg() -> dict:
    return json.loads((FIX / "wavlm_tiny_config.json").read_text())["cfg"]


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "wavlm_tiny.safetensors"))


@pytest.fixture(scope="module")
def tiny(tiny_state, tiny_cfg):
    return wavlm_from_original(tiny_state, tiny_cfg)


@pytest.fixture(scope="module")
def edge_stored(arrays) -> np.ndarray:
    return official.edge_features_from(arrays["baseline_y_12800"], arrays["baseline_y_22050"])


@pytest.fixture(scope="module")
def cond(wave, tiny):
    return official.stage1_features(wave, tiny).values


def assert_edge_close(edge: np.ndarray, ref: np.ndarray) -> None:
    """README I.2: envelope 1e-5, MFCC 2e-4, chroma 1e-6, one-hot columns exact."""
    np.testing.assert_allclose(edge[:, 0], ref[:, 0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(edge[:, 1:21], ref[:, 1:21], rtol=0, atol=2e-4)
    np.testing.assert_allclose(edge[:, 21:33], ref[:, 21:33], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(edge[:, 33:], ref[:, 33:])


# --- EDGE / librosa baseline -------------------------------------------------------------


def test_edge_feature_code_on_stored_signals(edge_stored, arrays):
    assert edge_stored.shape == (81, 35) and edge_stored.dtype == np.float32
    np.testing.assert_allclose(edge_stored[:, 0], arrays["baseline_envelope_full"], atol=1e-5)
    np.testing.assert_allclose(edge_stored[:, 1:21], arrays["baseline_mfcc_full"], atol=2e-4)
    np.testing.assert_allclose(edge_stored[:, 21:33], arrays["baseline_chroma_full"], atol=1e-6)
    np.testing.assert_array_equal(
        np.flatnonzero(edge_stored[:, 33]), arrays["baseline_onset_frames"]
    )
    np.testing.assert_array_equal(
        np.flatnonzero(edge_stored[:, 34]), arrays["baseline_beat_frames"]
    )
    assert_edge_close(edge_stored[:80], arrays["baseline_feats"])


def test_start_bpm_from_22050_load(arrays):
    import librosa

    bpm = librosa.feature.tempo(y=arrays["baseline_y_22050"], sr=official.TEMPO_SR)[0]
    assert bpm == arrays["baseline_start_bpm"]


def test_resamplers_match_librosa_load(wave, arrays):
    y12 = official.resample_like_librosa(wave, 16000, official.EDGE_SR)
    y22 = official.resample_like_librosa(wave, 16000, official.TEMPO_SR)
    assert y12.shape == arrays["baseline_y_12800"].shape
    assert y22.shape == arrays["baseline_y_22050"].shape
    np.testing.assert_allclose(y12, arrays["baseline_y_12800"], rtol=0, atol=2e-3)
    np.testing.assert_allclose(y22, arrays["baseline_y_22050"], rtol=0, atol=2e-3)


# --- WavLM -------------------------------------------------------------------------------


def test_wavlm_normalize(wave, arrays):
    np.testing.assert_allclose(official.wavlm_normalize(wave), arrays["wavlm_input"], atol=2e-6)


def test_wavlm_features_tiny(wave, arrays, tiny):
    f50 = official.wavlm_features_50hz(tiny, wave)
    np.testing.assert_allclose(f50, arrays["wavlm_feats_50hz"], rtol=0, atol=1e-4)
    f25 = official.wavlm_features_25fps(tiny, wave)
    np.testing.assert_allclose(f25, arrays["wavlm_feats_25fps"], rtol=0, atol=1e-4)


def test_pos_conv_weight_norm_really_loaded(tiny, tiny_state):
    g = tiny_state["encoder.pos_conv.0.weight_g"].float()  # (1, 1, K)
    v = tiny_state["encoder.pos_conv.0.weight_v"].float()  # (C, C / groups, K)
    expected = g * v / v.norm(dim=(0, 1), keepdim=True)
    torch.testing.assert_close(tiny.encoder.pos_conv_embed.conv.weight, expected)


def test_stage1_condition_tiny(cond, arrays):
    # The full path resamples wave_int16 itself. Our soxr-HQ resampling reproduces the stored
    # 12.8/22.05 kHz signals (atol 2e-3 tested above; bitwise with soxr 1.x), so the feature-code
    # tolerances of README I.2 apply unchanged: WavLM 1e-4, EDGE per column group.
    ref = arrays["stage1_cond_tiny"]
    assert cond.shape == ref.shape == (80, 67)
    np.testing.assert_allclose(cond[:, :32], ref[:, :32], rtol=0, atol=1e-4)
    assert_edge_close(cond[:, 32:], ref[:, 32:])


@pytest.mark.parametrize("seconds", [0.00625, 1.0, 5.3])
def test_arbitrary_lengths(seconds, wave, tiny):
    n = round(seconds * 16000)
    x = np.resize(wave, n) * np.float32(0.8)  # repeat the test signal
    feats = official.stage1_features(x, tiny)
    assert feats.kind == official.KIND
    assert feats.values.shape == (math.ceil(n / 640), 32 + 35)
    assert np.isfinite(feats.values).all()
    assert set(np.unique(feats.values[:, -2:])) <= {0.0, 1.0}


def test_edge_uses_original_rate_signal(wave, tiny):
    import soxr

    original = soxr.resample(wave, 16000, 44100, quality="HQ")
    feats = official.stage1_features(wave, tiny, original=original, original_rate=44100)
    assert feats.values.shape == (80, 67) and np.isfinite(feats.values).all()


# --- loading -----------------------------------------------------------------------------


def test_save_pretrained_round_trip(tmp_path, wave, tiny):
    tiny.save_pretrained(tmp_path)
    again = load_wavlm(tmp_path)
    assert not again.training and next(again.parameters()).dtype == torch.float32
    np.testing.assert_array_equal(
        official.wavlm_features_50hz(again, wave), official.wavlm_features_50hz(tiny, wave)
    )


def test_bin_folder_with_legacy_weight_norm_names(tmp_path, wave, tiny):
    tiny.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    pos = "encoder.pos_conv_embed.conv."
    state[pos + "weight_g"] = state.pop(pos + "parametrizations.weight.original0")
    state[pos + "weight_v"] = state.pop(pos + "parametrizations.weight.original1")
    torch.save(state, tmp_path / "pytorch_model.bin")
    again = load_wavlm(tmp_path)
    np.testing.assert_array_equal(
        official.wavlm_features_50hz(again, wave), official.wavlm_features_50hz(tiny, wave)
    )


def test_original_pt_round_trip(tmp_path, wave, tiny, tiny_state, tiny_cfg):
    torch.save({"cfg": tiny_cfg, "model": tiny_state}, tmp_path / "WavLM-Tiny.pt")
    again = load_wavlm(tmp_path / "WavLM-Tiny.pt")
    np.testing.assert_array_equal(
        official.wavlm_features_50hz(again, wave), official.wavlm_features_50hz(tiny, wave)
    )
    from_st = load_wavlm(FIX / "wavlm_tiny.safetensors", cfg=FIX / "wavlm_tiny_config.json")
    np.testing.assert_array_equal(
        official.wavlm_features_50hz(from_st, wave), official.wavlm_features_50hz(tiny, wave)
    )


class _Payload:
    def __reduce__(self):
        return (print, ("PAYLOAD RAN",))


def test_pickle_with_code_is_refused(tmp_path, capsys, tiny_state, tiny_cfg):
    torch.save({"cfg": tiny_cfg, "model": tiny_state, "x": _Payload()}, tmp_path / "evil.pt")
    capsys.readouterr()
    with pytest.raises(WeightsError, match="refusing to load"):
        load_wavlm(tmp_path / "evil.pt")
    assert "PAYLOAD RAN" not in capsys.readouterr().out


def test_missing_and_unexpected_keys_named(tmp_path, tiny_state, tiny_cfg):
    state = dict(tiny_state)
    del state["encoder.pos_conv.0.weight_g"]
    state["encoder.extra_head.weight"] = torch.zeros(3)
    torch.save({"cfg": tiny_cfg, "model": state}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError) as err:
        load_wavlm(tmp_path / "bad.pt")
    msg = str(err.value)
    assert "missing: encoder.pos_conv_embed.conv.parametrizations.weight.original0" in msg
    assert "unexpected: encoder.extra_head.weight" in msg
