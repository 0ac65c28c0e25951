"""The project's SpectralConv computes exactly what neuraloperator's does, and its inference cache
never serves a stale weight."""

import pytest
import torch
from neuralop.layers.spectral_convolution import SpectralConv as NeuralopSpectralConv

from models.spectral import SpectralConv


def _pair(factorization, n_modes, c_in=3, c_out=5):
    torch.manual_seed(0)
    ref = NeuralopSpectralConv(c_in, c_out, n_modes, bias=False, factorization=factorization, rank=0.42)
    ours = SpectralConv(c_in, c_out, n_modes, bias=False, factorization=factorization, rank=0.42)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("factorization", [None, "tucker", "cp"])
@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((12, 14, 16), (6, 8, 8)), ((6, 8), (8, 10))])
def test_matches_neuraloperator(factorization, shape, n_modes):
    ref, ours = _pair(factorization, n_modes)
    x = torch.randn(2, 3, *shape)
    torch.testing.assert_close(ours(x), ref(x))
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x))  # cached weight
        torch.testing.assert_close(ours(x), ref(x))  # cache hit


def test_cache_follows_weight_updates():
    ref, ours = _pair("tucker", (8, 10))
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        ours(x)
        assert ours._cache is not None
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    ours(x).abs().sum().backward()  # training: no cache involved
    optimizer.step()
    with torch.no_grad():
        ref.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), ref(x))  # the step invalidated the cache
        for p in ours.parameters():
            p.mul_(0.5)
        ref.load_state_dict(ours.state_dict())
        torch.testing.assert_close(ours(x), ref(x))


def test_gradients_flow_in_training():
    _, ours = _pair("tucker", (8, 10))
    ours(torch.randn(1, 3, 20, 24)).abs().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())
