"""SMGA against the official code: strict loading, forward, DDIM and loss parity (fixtures A.*).

The fixtures were produced by the official ``GestureDecoder``/``GestureDiffusion`` at reduced
width (tests/fixtures/official/README.md §A); tolerances are the README's.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.errors import WeightsError
from mmgt.models.smga import SMGA, preset
from mmgt.schedulers.pose import CosineSchedule, ddim_sample, ddim_time_pairs
from mmgt.train.losses import smga_loss
from mmgt.weights.smga import (
    check_state_dict,
    load_smga,
    load_smga_safetensors,
    read_state_dict,
    save_smga_safetensors,
)

FIX = Path(__file__).parent / "fixtures" / "official"
STATE = FIX / "smga_tiny_state.safetensors"


def _npz(name: str) -> dict[str, torch.Tensor]:
    z = np.load(FIX / name)
    return {k: torch.from_numpy(z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k])
            for k in z.files}  # fmt: skip


@pytest.fixture(scope="module")
def model() -> SMGA:
    return load_smga(STATE, preset("fixture"))


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return _npz("smga_tiny_io.npz")


def test_fixture_state_loads_strictly(model):
    assert model.config.latent_dim == 64 and len(model.seqTransDecoder.stack) == 2
    state = read_state_dict(STATE)
    assert len(state) == 155 and check_state_dict(SMGA(preset("fixture")), state) == []
    # The shared rotary buffer appears under all five official paths.
    names = {k for k in model.state_dict() if k.endswith("rotary.freqs")}
    assert names == {
        "rotary.freqs",
        "cond_encoder.0.rotary.freqs",
        "cond_encoder.1.rotary.freqs",
        "seqTransDecoder.stack.0.rotary.freqs",
        "seqTransDecoder.stack.1.rotary.freqs",
    }


def test_official_preset_has_the_official_key_layout():
    with torch.device("meta"):
        official = SMGA(preset("official"))
    keys = set(official.state_dict())
    # Same names as the fixture (which has 2 layers), extended to 8 decoder layers.
    fixture = set(read_state_dict(STATE))
    pattern = {re.sub(r"stack\.\d+\.", "stack.N.", k) for k in keys}
    assert pattern == {re.sub(r"stack\.\d+\.", "stack.N.", k) for k in fixture}
    assert {int(m) for k in keys for m in re.findall(r"stack\.(\d+)\.", k)} == set(range(8))
    shapes = {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert shapes["input_projection.weight"] == (512, 804)
    assert shapes["cond_projection.weight"] == (512, 1059)
    assert shapes["null_cond_embed"] == (1, 80, 512)
    assert shapes["seqTransDecoder.stack.7.linear1.weight"] == (1024, 512)
    assert shapes["final_layer.weight"] == (402, 512)


def test_forward_matches_official(model, io):
    with torch.no_grad():
        keep = torch.ones(2, dtype=torch.bool)
        out_cond = model(io["x"], io["cond_frame"], io["cond"], io["times"], keep)
        out_uncond = model(io["x"], io["cond_frame"], io["cond"], io["times"], ~keep)
        guided = model.guided(io["x"], io["cond_frame"], io["cond"], io["times"], 2.0)
    outputs = {"out_cond": out_cond, "out_uncond": out_uncond, "out_guided_w2": guided}
    for name, got in outputs.items():
        np.testing.assert_allclose(got, io[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_intermediates_match_official(model, io):
    seen = {}
    hooks = [
        model.time_mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("t_hidden", o)),
        model.norm_cond.register_forward_hook(lambda m, i, o: seen.__setitem__("memory", o)),
        model.seqTransDecoder.stack[0].register_forward_hook(
            lambda m, i, o: seen.__setitem__("stack0", (o, i[3]))
        ),
    ]
    with torch.no_grad():
        model(io["x"], io["cond_frame"], io["cond"], io["times"])
    for h in hooks:
        h.remove()
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(seen["t_hidden"], io["dbg_cond_t_hidden"], **tol)
    np.testing.assert_allclose(seen["memory"], io["dbg_cond_memory"], **tol)
    np.testing.assert_allclose(seen["stack0"][0], io["dbg_cond_stack_0_out"], **tol)
    np.testing.assert_allclose(seen["stack0"][1], io["dbg_cond_film_t"], **tol)  # FiLM vector


def test_schedule_matches_official():
    dd = _npz("smga_tiny_ddim.npz")
    sched = CosineSchedule()
    np.testing.assert_array_equal(sched.alphas_cumprod.numpy(), dd["alphas_cumprod"].numpy())
    np.testing.assert_array_equal(sched.betas.numpy(), dd["betas"].numpy())
    assert ddim_time_pairs(50) == [tuple(p) for p in dd["time_pairs"].tolist()]


def test_ddim_sampling_matches_official(model, io):
    dd = _npz("smga_tiny_ddim.npz")
    draws = list(dd["noise_codes_int8"].float() / dd["noise_scale"])
    cond_frame, cond = io["cond_frame"][:1], io["cond"][:1]
    first_x0 = {}

    def denoise(x, t):
        x0 = model.guided(x, cond_frame, cond, t, 2.0)
        first_x0.setdefault("x0", x0.clamp(-1, 1))
        return x0

    with torch.no_grad():
        sample = ddim_sample(denoise, CosineSchedule(), (1, 80, 402), steps=50, eta=1.0,
                             noise=lambda shape: draws.pop(0))  # fmt: skip
    assert not draws  # exactly 50 draws: x_T and one per step but the last
    np.testing.assert_allclose(first_x0["x0"], dd["step0_x0_pred"], atol=2e-4)
    np.testing.assert_allclose(sample, dd["sample"], atol=2e-4)


def test_training_loss_matches_official(model):
    lz = _npz("smga_tiny_loss.npz")
    io = _npz("smga_tiny_io.npz")
    sched = CosineSchedule()
    x_t = sched.q_sample(lz["x0"], lz["t"], lz["noise"])
    with torch.no_grad():
        out = model(x_t, lz["x0"][:, 0], io["cond"], lz["t"])
        np.testing.assert_allclose(out, lz["model_out"], rtol=1e-4, atol=1e-4)
        total, terms = smga_loss(lz["model_out"], lz["x0"], mode="official")
    got = torch.stack(list(terms.values())).numpy()
    np.testing.assert_allclose(got, lz["loss_terms"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(float(total), float(lz["loss_total"]), rtol=1e-5)


def test_loader_reports_problems_by_name(tmp_path):
    state = read_state_dict(STATE)
    state.pop("final_layer.bias")
    state["extra.weight"] = torch.zeros(3)
    state["input_projection.weight"] = torch.zeros(32, 804)
    bad = tmp_path / "bad.pt"
    torch.save({"ema_state_dict": state, "epoch": 3}, bad)
    with pytest.raises(WeightsError) as err:
        load_smga(bad, preset("fixture"))
    msg = str(err.value)
    assert "missing: final_layer.bias" in msg and "unexpected: extra.weight" in msg
    assert "input_projection.weight: checkpoint (32, 804) vs model (64, 804) (latent_dim=32" in msg


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"ema_state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(WeightsError, match="refusing to load"):
        load_smga(path, preset("fixture"))
    assert "code ran" not in capsys.readouterr().out


def test_official_checkpoint_layout_and_safetensors_round_trip(tmp_path, model, io):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "audio2pose_best_model.pt"
    optim = torch.optim.Adam(model.parameters())
    torch.save({"ema_state_dict": state, "model_state_dict": state,
                "optimizer_state_dict": optim.state_dict(), "normalizer": None}, ckpt)  # fmt: skip
    loaded = load_smga(ckpt, preset("fixture"))
    out = tmp_path / "smga.safetensors"
    save_smga_safetensors(loaded, out)
    again = load_smga_safetensors(out).model
    with torch.no_grad():
        a = loaded(io["x"], io["cond_frame"], io["cond"], io["times"])
        b = again(io["x"], io["cond_frame"], io["cond"], io["times"])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_official_checkpoints_condition_on_a_legless_reference(tmp_path, model):
    """As the official audio2vid (``mask_leg``): knees and ankles of the normalised reference
    pose are zero in the model's condition; the conversion to safetensors keeps this."""
    from mmgt.drivers import make_driver
    from mmgt.keypoints import layout
    from mmgt.types import AudioFeatures
    from mmgt.weights.smga import convert_official_smga

    ckpt = tmp_path / "audio2pose_best_model.pt"
    torch.save({"ema_state_dict": model.state_dict()}, ckpt)
    converted = convert_official_smga(ckpt, tmp_path / "smga.safetensors", heads=4)
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.uniform(50, 450, (134, 2)), np.ones((134, 1))], 1).astype(
        np.float32
    )
    features = AudioFeatures(rng.normal(size=(12, model.config.audio_dim)),
                             kind="official-wavlm-edge")  # fmt: skip
    for weights in (ckpt, converted):
        drv = make_driver("smga", weights=weights, heads=4, steps=1)
        assert drv.mask_reference_legs and drv.ambient is None
        assert drv.settings.eta == 1.0  # still sampled the official way
        conds = []
        sample = drv._sample
        drv._sample = lambda audio, cond, *rest, s=sample, seen=conds: (
            seen.append(cond) or s(audio, cond, *rest)
        )
        drv.generate(features, reference)
        cond = conds[0][0].numpy().reshape(134, 3)
        want = layout.normalize(reference).reshape(134, 3)
        assert (cond[layout.LEGS] == 0).all()
        others = np.setdiff1d(np.arange(134), layout.LEGS)
        np.testing.assert_array_equal(cond[others], want[others])
