"""Stage-2 networks against the official code: keys, shapes and one denoising step.

Fixture README sections B.1–B.5 and D: a reduced-width official state dict in the ``net-*.pth``
layout and the official outputs of one 12-frame step (reference bank, pose features, audio
tokens, mask pyramid, motion_scale [1, 1, 2]) with its variants. Tolerances from README D.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmgt.models.mmhaa import BranchMasks
from mmgt.models.reference import ReferenceRead, reference_bank
from mmgt.models.stage2 import PRESETS, Stage2Net
from mmgt.weights.stage2 import expected_shapes, load_stage2_net

FIX = Path(__file__).parent / "fixtures" / "official"
NET = FIX / "stage2_tiny_net.safetensors"
TOL = dict(rtol=1e-4, atol=1e-4)


def _keys_file() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in (FIX / "stage2_tiny_keys.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        name, shape = line.split("\t")[:2]
        shapes[name] = tuple(int(x) for x in shape.split("x")) if shape else ()
    return shapes


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    with np.load(FIX / "stage2_tiny_io.npz") as data:
        return {
            k: torch.from_numpy(v.astype(np.float32) if v.dtype == np.float16 else v)
            for k, v in data.items()
        }


@pytest.fixture(scope="module")
def net() -> Stage2Net:
    return load_stage2_net(NET, PRESETS["fixture"])


@pytest.fixture(scope="module")
def conditions(net, io):
    with torch.no_grad():
        tokens = net.audioproj(io["audio_window"])
        pose = net.pose_guider(io["pose_images_u8"].float() / 255)
        bank = reference_bank(net.reference_unet, io["ref_latent"], io["clip_embed"])
    masks = BranchMasks(
        *(tuple(io[f"mask_{b}_l{k}"] for k in range(4)) for b in ("full", "face", "lip"))
    )
    return tokens, pose, bank, masks


def _step(net, io, conditions, *, bank=True, masks=None, weights=(1.0, 1.0, 2.0)):
    tokens, pose, bank_t, masks_t = conditions
    reference = ReferenceRead(bank_t if bank is True else bank, 12) if bank is not False else None
    with torch.no_grad():
        return net.denoising_unet(
            io["latents"],
            int(io["timestep"]),
            io["clip_embed"],
            tokens,
            masks if masks is not None else masks_t,
            pose,
            reference,
            weights,
        )


def test_key_set_and_shapes_equal_the_official_file():
    ours = {k: tuple(s) for k, s in expected_shapes(PRESETS["fixture"]).items()}
    assert ours == _keys_file()


def test_official_preset_key_set_on_meta_device():
    """SD1.5 widths: the fixture's names plus the 320→640 shortcut (README B.2), 2.3 B values."""
    official = expected_shapes(PRESETS["official"])
    fixture = set(_keys_file())
    extra = {
        f"{p}.down_blocks.1.resnets.0.conv_shortcut.{w}"
        for p in ("reference_unet", "denoising_unet")
        for w in ("weight", "bias")
    }
    assert set(official) == fixture | extra
    d = "denoising_unet.down_blocks"
    assert tuple(official[f"{d}.1.audio_modules.0.proj_in.weight"]) == (320, 640, 1, 1)
    assert tuple(official[f"{d}.2.audio_modules.0.proj_in.weight"]) == (640, 1280, 1, 1)
    assert tuple(official["audioproj.proj1.weight"]) == (512, 46080)
    assert tuple(official["audioproj.proj3.weight"]) == (32 * 768, 512)
    assert 2.2e9 < sum(int(np.prod(s)) for s in official.values()) < 2.4e9


def test_audio_tokens_and_pose_features(io, conditions):
    tokens, pose, _, _ = conditions
    torch.testing.assert_close(tokens, io["audio_tokens"], rtol=1e-5, atol=1e-5)
    expected = io["pose_fea"].transpose(1, 2).reshape(12, 32, 16, 16)  # frames folded
    torch.testing.assert_close(pose, expected, rtol=1e-5, atol=1e-5)


def test_reference_bank_matches_the_official_writer(io, conditions):
    bank = conditions[2]
    index = json.loads((FIX / "fixtures_meta.json").read_text())["stage2"]["bank_array_index"]
    assert set(index.values()) == set(bank)
    for array, name in index.items():
        assert bank[name].dtype == torch.float16
        torch.testing.assert_close(bank[name].float(), io[array], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(
    "variant",
    ["out_main", "out_no_ref", "out_eval_branch", "out_zero_masks", "out_bank_fp32"],
)
def test_denoising_step_variants(net, io, conditions, variant):
    masks = conditions[3]
    if variant == "out_main":
        out = _step(net, io, conditions)
    elif variant == "out_no_ref":
        out = _step(net, io, conditions, bank=False)
    elif variant == "out_eval_branch":  # the official eval-mode branch drops motion_scale
        out = _step(net, io, conditions, weights=(1.0, 1.0, 1.0))
    elif variant == "out_zero_masks":
        out = _step(net, io, conditions, masks=BranchMasks.zeros_like(masks))
    else:
        with torch.no_grad():
            bank32 = reference_bank(
                net.reference_unet, io["ref_latent"], io["clip_embed"], dtype=torch.float32
            )
        out = _step(net, io, conditions, bank=bank32)
    torch.testing.assert_close(out, io[variant], **TOL)


def test_cfg_pair_and_guidance(net, io, conditions):
    """The pipeline's CFG batch: row 0 zero CLIP, zero audio tokens, no bank; row 1 conditional."""
    tokens, pose, bank, masks = conditions
    ctx = torch.cat([torch.zeros_like(io["clip_embed"]), io["clip_embed"]])
    with torch.no_grad():
        pair = net.denoising_unet(
            io["latents"].repeat(2, 1, 1, 1, 1),
            int(io["timestep"]),
            ctx,
            torch.cat([torch.zeros_like(tokens), tokens]),
            masks.repeat(2),
            pose.repeat(2, 1, 1, 1),
            ReferenceRead(bank, 12, uncond_rows=12),
        )
    torch.testing.assert_close(pair, io["out_cfg_pair"], **TOL)
    guided = pair[0] + 3.5 * (pair[1] - pair[0])
    torch.testing.assert_close(guided[None], io["v_guided_cfg3p5"], rtol=0, atol=3e-4)
