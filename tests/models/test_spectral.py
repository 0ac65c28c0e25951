"""The faster contraction computes exactly what neuraloperator's SpectralConv computes."""

import pytest
import torch
from neuralop.layers.spectral_convolution import SpectralConv

from models.spectral import FastSpectralConv


@pytest.mark.parametrize("factorization", [None, "tucker"])
@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((12, 14, 16), (6, 8, 8)), ((6, 8), (8, 10))])
def test_matches_neuraloperator(factorization, shape, n_modes):
    torch.manual_seed(0)
    ref = SpectralConv(3, 5, n_modes, bias=False, factorization=factorization, rank=0.42)
    fast = FastSpectralConv(3, 5, n_modes, bias=False, factorization=factorization, rank=0.42)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, *shape)
    torch.testing.assert_close(fast(x), ref(x), atol=1e-5, rtol=1e-4)
    assert fast(x).shape == (2, 5, *shape)
