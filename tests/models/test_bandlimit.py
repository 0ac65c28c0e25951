"""Band-limiting: the identity at the band's own size, exact on in-band cosines, removes the rest."""

import math

import pytest
import torch

from models import FNOReg
from models.bandlimit import band_limit


def _cosines(shape, freqs):
    """Sum over axes of DCT-II basis functions cos(pi f (n + 1/2) / N) with the given frequencies."""
    out = torch.zeros(1, 1, *shape, dtype=torch.float64)
    for axis, (n, f) in enumerate(zip(shape, freqs)):
        n_idx = torch.arange(n, dtype=torch.float64)
        wave = torch.cos(math.pi * f * (n_idx + 0.5) / n)
        view = [1] * len(shape)
        view[axis] = n
        out = out + wave.view(1, 1, *view)
    return out


@pytest.mark.parametrize("shape", [(40, 48), (41, 47), (20, 24, 28)])
def test_identity_at_and_below_the_band(shape):
    field = torch.randn(2, len(shape), *shape)
    assert band_limit(field, shape) is field
    assert band_limit(field, [2 * s for s in shape]) is field


@pytest.mark.parametrize("shape, band", [((80, 96), (40, 48)), ((81, 95), (40, 48)), ((32, 36, 40), (16, 18, 20))])
def test_in_band_passes_and_out_of_band_is_removed(shape, band):
    inside = _cosines(shape, [b - 1 for b in band])  # highest kept cosine on every axis
    outside = _cosines(shape, [b + 3 for b in band])
    torch.testing.assert_close(band_limit(inside, band), inside, atol=1e-9, rtol=0)
    assert band_limit(outside, band).abs().max() < 1e-9
    torch.testing.assert_close(band_limit(inside + outside, band), inside, atol=1e-9, rtol=0)


def test_no_ringing_at_the_borders_for_a_ramp():
    """A linear ramp (different values at opposite borders) passes almost unchanged: no wrap jump."""
    shape = (64, 72)
    ramp = torch.linspace(-1, 1, 64, dtype=torch.float64).view(1, 1, 64, 1).expand(1, 1, *shape)
    out = band_limit(ramp, (32, 36))
    assert (out - ramp).abs().max() < 0.02


def test_fnoreg_records_training_shape_and_filters_only_above_it():
    torch.manual_seed(0)
    model = FNOReg(2, 8, 16, 1, [8, 10], head_init="default", band_limit=True)
    assert model.trained_shape.tolist() == [0, 0]
    x = torch.rand(1, 1, 24, 28)
    model.train()
    model(x, x)
    assert model.trained_shape.tolist() == [24, 28]
    model.eval()
    plain = FNOReg(2, 8, 16, 1, [8, 10], head_init="default")
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        same = model(x, x)
        torch.testing.assert_close(same, plain(x, x))  # at the training size: identity
        big = torch.rand(1, 1, 48, 56)
        filtered, raw = model(big, big.flip(2)), plain(big, big.flip(2))
        torch.testing.assert_close(filtered, band_limit(raw, (24, 28)))
        assert not torch.allclose(filtered, raw)


def test_old_checkpoints_without_trained_shape_still_load():
    model = FNOReg(2, 8, 16, 1, [8, 10], band_limit=True)
    state = {k: v for k, v in model.state_dict().items() if k != "trained_shape"}
    model.load_state_dict(state)
    assert model.trained_shape.tolist() == [0, 0]
