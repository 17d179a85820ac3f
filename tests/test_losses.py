"""SMGA losses: the weights of the position, velocity and acceleration terms."""

from __future__ import annotations

import argparse

import pytest
import torch

from mmgt.train.cli import _three_weights
from mmgt.train.losses import motion_terms, smga_loss


def _target() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 24, 402, generator=gen).cumsum(1) * 0.05  # (B, T, 402) smooth-ish walk


@pytest.mark.parametrize("mode", ["paper", "official"])
def test_term_weights_scale_each_term(mode):
    target = _target()
    pred = target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    total, terms = smga_loss(pred, target, mode=mode)
    same, _ = smga_loss(pred, target, mode=mode, term_weights=(1.0, 1.0, 1.0))
    assert torch.equal(total, same)
    weighted, wterms = smga_loss(pred, target, mode=mode, term_weights=(2.0, 0.0, 5.0))
    for name, value in terms.items():
        factor = {"rec": 2.0, "vel": 0.0, "acc": 5.0}[name.rsplit("_", 1)[-1]]
        torch.testing.assert_close(wterms[name], factor * value)
    torch.testing.assert_close(weighted, sum(wterms.values()))


def test_a_heavier_acceleration_term_prefers_smooth_errors_to_jitter():
    """Two predictions equally far from the target: one shifted by a constant, one jittering
    frame to frame. The default weights already rank the jitter worse; raising the acceleration
    weight widens the gap, which is what the knob is for."""
    target = _target()
    sign = torch.tensor([1.0, -1.0]).repeat(12)[None, :, None]  # (1, T, 1) alternating
    offset, jitter = target + 0.1, target + 0.1 * sign
    assert torch.allclose(motion_terms(offset, target)[0], motion_terms(jitter, target)[0])

    def gap(weights):
        return float(smga_loss(jitter, target, term_weights=weights)[0]) / float(
            smga_loss(offset, target, term_weights=weights)[0]
        )

    assert gap((1.0, 1.0, 1.0)) > 1.0
    assert gap((1.0, 1.0, 8.0)) > 2 * gap((1.0, 1.0, 1.0))


def test_the_cli_reads_three_weights():
    assert _three_weights("1,1,8") == (1.0, 1.0, 8.0)
    for bad in ("1,2", "a,b,c", "1,-1,1"):
        with pytest.raises(argparse.ArgumentTypeError, match="three weights"):
            _three_weights(bad)
