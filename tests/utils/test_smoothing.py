"""Separable Gaussian smoothing: zero and replicate borders, 2D and 3D."""

import pytest
import torch

from utils.smoothing import gaussian_smooth


@pytest.mark.parametrize("shape", [(9, 12), (7, 8, 11)])
def test_replicate_keeps_constants_and_zeros_darken_the_border(shape):
    x = torch.full((1, 2, *shape), 3.0)
    torch.testing.assert_close(gaussian_smooth(x, 1.5, padding="replicate"), x)
    zeros = gaussian_smooth(x, 1.5)
    assert zeros.amax() <= 3.0 + 1e-6
    assert zeros[(0, 0) + (0,) * len(shape)] < 3.0


def test_linear_ramp_is_kept_in_the_interior():
    ramp = torch.arange(20.0).view(1, 1, 20, 1).expand(1, 1, 20, 6).contiguous()
    out = gaussian_smooth(ramp, 1.0, padding="replicate")
    torch.testing.assert_close(out[..., 3:-3, :], ramp[..., 3:-3, :])


def test_sigma_zero_is_the_identity_and_bad_padding_is_refused():
    x = torch.rand(1, 1, 5, 6)
    assert torch.equal(gaussian_smooth(x, 0.0), x)
    with pytest.raises(ValueError, match="padding"):
        gaussian_smooth(x, 1.0, padding="reflect")
