"""Stage-2 wav2vec2 audio path against the golden fixtures, the loader, and the live stream.

Fixture README sections H.2, I.1 item 5 and I.2 (tolerances: input 2e-6, everything else 1e-4).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmgt.audio import wav2vec as w2v
from mmgt.errors import WeightsError
from mmgt.models.audio_proj import PRESETS, AudioProjection
from mmgt.weights.wav2vec import load_wav2vec2

FIX = Path(__file__).parent / "fixtures" / "official"
ATOL = 1e-4
POS = "encoder.pos_conv_embed.conv."


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    with np.load(FIX / "audio_features.npz") as data:
        return {k: (v.astype(np.float32) if v.dtype == np.float16 else v) for k, v in data.items()}


@pytest.fixture(scope="module")
def wave(arrays) -> np.ndarray:
    return arrays["wave_int16"].astype(np.float32) / 32768


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIX / "wav2vec_tiny.safetensors"))


def write_folder(
    folder: Path, state: dict[str, torch.Tensor], bin_file: bool = False, **pre
) -> Path:
    """A transformers-format folder from the fixture config and ``state``."""
    meta = json.loads((FIX / "wav2vec_tiny_config.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(meta["hf_config"]))
    (folder / "preprocessor_config.json").write_text(json.dumps(meta["preprocessor_config"] | pre))
    if bin_file:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        save_file(state, str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("w2v")
    shutil.copy(FIX / "wav2vec_tiny.safetensors", folder / "model.safetensors")
    meta = json.loads((FIX / "wav2vec_tiny_config.json").read_text())
    (folder / "config.json").write_text(json.dumps(meta["hf_config"]))
    (folder / "preprocessor_config.json").write_text(json.dumps(meta["preprocessor_config"]))
    return load_wav2vec2(folder)


@pytest.fixture(scope="module")
def proj() -> AudioProjection:
    with safe_open(str(FIX / "stage2_tiny_net.safetensors"), "pt") as f:
        state = {
            k.removeprefix("audioproj."): f.get_tensor(k).float()
            for k in f.keys()
            if k.startswith("audioproj.")
        }
    proj = AudioProjection(PRESETS["fixture"])
    proj.load_state_dict(state, strict=True)
    return proj.eval()


def err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - b).max())


# -- official path --------------------------------------------------------------------------------
@pytest.mark.parametrize("pre", ["", "trunc_"])
def test_intermediates_match_fixture(model, arrays, wave, pre: str) -> None:
    n = int(arrays["trunc_n_samples"]) if pre else wave.size
    assert err(w2v.normalize(wave[:n]), arrays[pre + "w2v_input_values"]) < 2e-6  # measured 4.8e-7
    assert w2v.num_frames(n) == 80
    trace = w2v.run_wav2vec2(model, arrays[pre + "w2v_input_values"], 80)
    pairs = {
        "conv": "w2v_conv_features",  # measured 0 (both lengths)
        "conv_frames": "w2v_conv_features_25fps",  # 0
        "projected": "w2v_projected",  # 0 (main only)
        "hidden0": "w2v_hidden_state_0",  # 1.2e-6 (main only)
        "layers": "w2v_audio_emb",  # 1.8e-6 main, 2.4e-6 trunc
    }
    for field, name in pairs.items():
        if pre + name in arrays:
            assert err(getattr(trace, field), arrays[pre + name]) < ATOL, name
    emb = w2v.hidden_states(model, wave[:n])  # from the waveform: 2.6e-6 main, 2.1e-6 trunc
    assert emb.shape == (80, 12, 32) and err(emb, arrays[pre + "w2v_audio_emb"]) < ATOL


def test_windows_and_tokens_match_fixture(model, proj, arrays, wave) -> None:
    np.testing.assert_array_equal(w2v.window_index(80), arrays["w2v_window_index"])
    windows = w2v.frame_windows(arrays["w2v_audio_emb"])
    assert err(windows, arrays["w2v_window"]) == 0
    for pre, n in (("", wave.size), ("trunc_", int(arrays["trunc_n_samples"]))):
        tokens = w2v.audio_tokens(model, proj, wave[:n])  # measured 3.2e-6 / 2.9e-6
        assert tokens.shape == (1, 80, 4, 32)
        assert err(tokens.numpy(), arrays[pre + "audio_tokens"]) < ATOL, pre


def test_official_padding_and_short_input(model, wave) -> None:
    x, frames = w2v.model_input(model, wave[:16000], pad_to_multiple=80)  # 1.0 s: 25 → 80
    assert frames == 80 and x.size == 16000 + 35200  # fixture README H.2, "padding check"
    np.testing.assert_array_equal(x[:16000], w2v.normalize(wave[:16000]))
    assert not x[16000:].any()  # zeros appended after normalisation
    assert w2v.hidden_states(model, wave[:16000], pad_to_multiple=80).shape == (80, 12, 32)
    assert w2v.hidden_states(model, wave[:100]).shape == (1, 12, 32)  # below the receptive field


# -- loader ---------------------------------------------------------------------------------------
def test_ctc_layout_with_head_loads(model, tiny_state, tmp_path) -> None:
    state = {"wav2vec2." + k: t for k, t in tiny_state.items() if k != "masked_spec_embed"}
    state |= {"lm_head.weight": torch.zeros(32, 32), "lm_head.bias": torch.zeros(32)}
    ctc = load_wav2vec2(write_folder(tmp_path, state, bin_file=True))  # masked_spec_embed optional
    own = ctc.state_dict()
    for k, t in model.state_dict().items():
        if k != "masked_spec_embed":
            assert torch.equal(own[k], t), k


def test_legacy_pos_conv_is_really_loaded(model, tiny_state) -> None:
    g, v = (tiny_state[POS + n].float() for n in ("weight_g", "weight_v"))  # (1,1,K), (C,C/G,K)
    weight = g * v / v.norm(dim=(0, 1), keepdim=True)  # weight norm over all but dim 2
    conv = model.encoder.pos_conv_embed.conv
    torch.testing.assert_close(conv.weight, weight, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conv.bias, tiny_state[POS + "bias"].float())


@pytest.mark.parametrize(
    ("name", "reported"),
    [
        ("encoder.layers.3.feed_forward.output_dense.bias", None),
        (POS + "weight_v", "missing: " + POS + "parametrizations.weight.original1"),
        ("encoder.layers.3.extra.weight", "unexpected: encoder.layers.3.extra.weight"),
    ],
)
def test_key_errors_name_the_key(tiny_state, tmp_path, name: str, reported: str | None) -> None:
    state = dict(tiny_state)
    if name in state:
        del state[name]
    else:
        state[name] = torch.zeros(3)
    with pytest.raises(WeightsError, match="Wav2Vec2 model") as info:
        load_wav2vec2(write_folder(tmp_path, state))
    assert (reported or "missing: " + name) in str(info.value)


def test_shape_mismatch_and_preprocessor(tiny_state, tmp_path) -> None:
    state = dict(tiny_state) | {"feature_projection.projection.bias": torch.zeros(31)}
    with pytest.raises(WeightsError, match=r"shape feature_projection\.projection\.bias"):
        load_wav2vec2(write_folder(tmp_path / "a", state))
    raw = load_wav2vec2(write_folder(tmp_path / "b", tiny_state, do_normalize=False))
    assert raw.config.do_normalize is False
    x, _ = w2v.model_input(raw, np.full(800, 0.5, np.float32))
    assert (x == 0.5).all()  # not normalised
    with pytest.raises(WeightsError, match="16 kHz"):
        load_wav2vec2(write_folder(tmp_path / "c", tiny_state, sampling_rate=8000))
    with pytest.raises(WeightsError, match="config.json"):
        load_wav2vec2(tmp_path / "missing")


# -- live stream ----------------------------------------------------------------------------------
class IndexStream(w2v.StreamingWav2Vec2):
    """Rows hold their global frame index (the input sample k is the value k), so the test sees
    exactly which frames every window used."""

    def _embed(self, samples: np.ndarray) -> np.ndarray:
        self.window_sizes.append(samples.size)
        first = int(samples[0]) // w2v.HOP
        frames = np.arange(first, first + math.ceil(samples.size / w2v.HOP), dtype=np.float32)
        return frames[:, None, None]  # (S, 1 layer, 1 channel)


@pytest.mark.parametrize("lookahead", [0, 1, 3])
def test_stream_emits_every_frame_once_in_order(lookahead: int) -> None:
    n = 40_321  # 63 frames, the last one partial
    samples = np.arange(n, dtype=np.float32)
    fake_model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=1, hidden_size=1))
    stream = IndexStream(fake_model, context_s=0.2, lookahead_frames=lookahead, max_step_frames=4)
    stream.window_sizes = []
    got, pos = [], 0
    for size in [1000, 333, 5000, 1, 640, 12_000] * 5:
        out = stream.push(samples[pos : pos + size])
        pos += size
        got.append(out)
        emitted = sum(len(o) for o in got)
        assert emitted == max(0, min(pos, n) // w2v.HOP - lookahead)  # nothing held back needlessly
        if pos >= n:
            break
    got.append(stream.flush())
    windows = np.concatenate(got)[:, :, 0, 0]  # (frames, 5) of global frame indices
    frames = math.ceil(n / w2v.HOP)
    np.testing.assert_array_equal(windows[:, 2], np.arange(frames))  # each frame once, in order
    newest = windows.max(axis=1)  # the newest frame each window used ...
    seen = np.minimum(np.arange(frames) + min(lookahead, 2), frames - 1)
    assert (newest >= seen).all()  # at least the look-ahead (up to +2) was used
    expected = np.minimum(w2v.window_index(frames), newest[:, None])
    np.testing.assert_array_equal(windows, expected)  # ... the offline window clamped there
    assert max(stream.window_sizes) <= (5 + 2 + 4 + lookahead) * w2v.HOP  # bounded windows
    assert stream.frames_emitted == 0 and stream.samples_received == 0  # flush resets


def test_stream_approaches_offline(model, wave) -> None:
    offline = w2v.frame_windows(w2v.hidden_states(model, wave))  # (80, 5, 12, 32)

    def live(context_s: float, lookahead: int) -> np.ndarray:
        stream = w2v.StreamingWav2Vec2(model, context_s=context_s, lookahead_frames=lookahead)
        rows = [stream.push(wave[i : i + 1920]) for i in range(0, wave.size, 1920)]
        return np.concatenate([*rows, stream.flush()])

    # A window covering the whole utterance reproduces offline exactly (measured 0).
    assert err(live(4.0, 80), offline) < 1e-5
    # Middle frames 20–59 (|offline| mean 0.80, max 3.6). The tiny random model attends almost
    # uniformly, so it is far more context-sensitive than the real one; measured mean / max abs
    # difference: 0.4 s look-behind, no look-ahead 0.46 / 4.7; 2 s, look-ahead 2: 0.24 / 2.9.
    short, long = np.abs(live(0.4, 0) - offline)[20:60], np.abs(live(2.0, 2) - offline)[20:60]
    assert long.mean() < 0.3 and long.max() < 3.5
    assert long.mean() < 0.7 * short.mean()


def test_streaming_tokens(model, proj, wave) -> None:
    stream = w2v.StreamingAudioTokens(model, proj, context_s=1.0)
    tokens = stream.push(wave[:6400]) + stream.push(wave[6400:7000]) + stream.flush()
    assert len(tokens) == 11 and all(t.shape == (1, 4, 32) for t in tokens)


def test_an_unreadable_config_is_a_weights_error(tmp_path):
    """A model folder whose config.json is not JSON (a failed download) is named, not a
    transformers traceback."""
    from mmgt.weights.wavlm import load_wavlm

    (tmp_path / "config.json").write_text("<html>rate limited</html>")
    for load in (load_wav2vec2, load_wavlm):
        with pytest.raises(WeightsError, match=r"config.json cannot be used"):
            load(tmp_path)
