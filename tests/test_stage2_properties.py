"""Behavioural properties of the stage-2 networks (official fixture weights: no zero branches)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from mmgt.models.mmhaa import BranchMasks
from mmgt.models.reference import ReferenceRead, reference_bank
from mmgt.models.stage2 import PRESETS
from mmgt.weights.stage2 import load_stage2_net

NET = Path(__file__).parent / "fixtures" / "official" / "stage2_tiny_net.safetensors"
F = 4  # frames


@pytest.fixture(scope="module")
def net():
    return load_stage2_net(NET, PRESETS["fixture"])


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    masks = BranchMasks(
        *(tuple(torch.rand(F, (16 >> k) ** 2, generator=g) for k in range(4)) for _ in range(3))
    )
    return dict(
        latents=r(1, 4, F, 16, 16),
        context=r(1, 1, 32),
        audio=r(1, F, 4, 32),
        masks=masks,
        pose=r(F, 32, 16, 16),
        ref=r(1, 4, 16, 16),
    )


def _run(net, x, **over):
    x = {**x, **over}
    with torch.no_grad():
        bank = over.get("bank", reference_bank(net.reference_unet, x["ref"], x["context"]))
        reference = ReferenceRead(bank, F) if bank is not None else None
        return net.denoising_unet(
            x["latents"], 499, x["context"], x["audio"], x["masks"], x["pose"], reference
        )


def test_zero_masks_make_the_output_independent_of_audio(net):
    x = _inputs()
    zero = BranchMasks.zeros_like(x["masks"])
    a = _run(net, x, masks=zero)
    b = _run(net, x, masks=zero, audio=torch.randn(1, F, 4, 32))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # …but zero masks are not the audio-off path: the adapters' biases still add.
    module = copy.deepcopy(net.denoising_unet.down_blocks[0].audio_modules[0])
    h = torch.randn(F, 32, 16, 16)
    block = module.transformer_blocks[0]
    with torch.no_grad():
        with_bias = module(h, x["audio"].reshape(F, 4, 32), zero, (1.0, 1.0, 2.0))
        for conv in (block.zero_conv_full, block.zero_conv_face, block.zero_conv_lip):
            conv.bias.zero_()
        without = module(h, x["audio"].reshape(F, 4, 32), zero, (1.0, 1.0, 2.0))
    assert (with_bias - without).abs().max() > 1e-3


def test_audio_changes_only_masked_regions_at_the_first_down_block(net):
    x = _inputs(1)
    region = torch.zeros(16, 16)
    region[4:9, 6:12] = 1.0
    flat = region.reshape(1, -1).expand(F, -1)
    masks = BranchMasks(*((flat * 0.5,) * 4, (flat,) * 4, (flat * 2,) * 4))
    module = net.denoising_unet.down_blocks[0].audio_modules[0]
    h = torch.randn(F, 32, 16, 16)
    with torch.no_grad():
        a = module(h, x["audio"].reshape(F, 4, 32), masks, (1.0, 1.0, 2.0))
        b = module(h, torch.randn(F, 4, 32), masks, (1.0, 1.0, 2.0))
    changed = (a - b).abs().amax(dim=(0, 1)) > 1e-6  # (16, 16)
    assert changed.any()
    assert not changed[region == 0].any()


def test_reference_features_change_the_output(net):
    x = _inputs(2)
    with_ref = _run(net, x)
    assert (with_ref - _run(net, x, bank=None)).abs().max() > 1e-3
    with torch.no_grad():
        other = reference_bank(net.reference_unet, torch.randn(1, 4, 16, 16), x["context"])
    assert (with_ref - _run(net, x, bank=other)).abs().max() > 1e-3


def test_temporal_modules_mix_frames(net):
    """Changing frame 0's latent changes the other frames' predictions (and only motion modules
    connect frames)."""
    x = _inputs(3)
    base = _run(net, x)
    latents = x["latents"].clone()
    latents[:, :, 0] += 1.0
    moved = _run(net, x, latents=latents)
    assert (moved - base)[:, :, 1:].abs().max() > 1e-3
    module = net.denoising_unet.down_blocks[0].motion_modules[0]
    h = torch.randn(2 * F, 32, 8, 8)
    with torch.no_grad():
        out = module(h, F)
        h2 = h.clone()
        h2[0] += torch.randn_like(h2[0])  # (a constant would be normalised away)
        out2 = module(h2, F)
    assert (out2 - out)[1:F].abs().max() > 1e-4  # same sample, other frames
    torch.testing.assert_close(out2[F:], out[F:])  # the other sample is untouched
