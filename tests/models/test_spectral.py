"""The project's SpectralConv: neuraloperator's weights and modes, right at every size.

At even sizes it computes exactly what neuraloperator 2.0.0 computes; at odd sizes (where 2.0.0
shifts every kept mode by one bin) it matches an independent reference that places each kept
frequency in its FFT bin by hand. Its inference cache never serves a stale weight.
"""

import pytest
import torch
from neuralop.layers.spectral_convolution import SpectralConv as NeuralopSpectralConv

from models import spectral
from models.spectral import SpectralConv, clear_weight_caches, weight_cache


def _pair(factorization, n_modes, c_in=3, c_out=5):
    torch.manual_seed(0)
    ref = NeuralopSpectralConv(c_in, c_out, n_modes, bias=False, factorization=factorization, rank=0.42)
    ours = SpectralConv(c_in, c_out, n_modes, bias=False, factorization=factorization, rank=0.42)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _reference(layer, x):
    """Spectral convolution written out bin by bin: full-size kernel, one complex einsum."""
    weight = layer.weight if torch.is_tensor(layer.weight) else layer.weight.to_tensor()
    weight = weight.detach()
    *lead, last = x.shape[2:]
    spectrum = torch.fft.rfftn(x, dim=tuple(range(2, x.ndim)), norm=layer.fft_norm)
    kernel = torch.zeros(*weight.shape[:2], *spectrum.shape[2:], dtype=spectrum.dtype)
    kept_last = min(weight.shape[-1], spectrum.shape[-1])
    ranges = []
    for size, k in zip(lead, weight.shape[2:-1]):
        freqs = [f for f in range(-(k // 2), k - k // 2) if -(size // 2) <= f <= size - size // 2 - 1]
        ranges.append(freqs)
    import itertools

    for combo in itertools.product(*ranges):
        bins = tuple(f % size for f, size in zip(combo, lead))
        widx = tuple(f + k // 2 for f, k in zip(combo, weight.shape[2:-1]))
        kernel[(slice(None), slice(None), *bins, slice(0, kept_last))] = weight[
            (slice(None), slice(None), *widx, slice(0, kept_last))
        ]
    out = torch.einsum("bi...,io...->bo...", spectrum, kernel)
    return torch.fft.irfftn(out, s=x.shape[2:], dim=tuple(range(2, x.ndim)), norm=layer.fft_norm)


@pytest.mark.parametrize("factorization", [None, "tucker", "cp"])
@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((12, 14, 16), (6, 8, 8)), ((6, 8), (8, 10))])
def test_matches_neuraloperator_at_even_sizes(factorization, shape, n_modes):
    ref, ours = _pair(factorization, n_modes)
    x = torch.randn(2, 3, *shape)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    with torch.inference_mode(), weight_cache(ours):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)  # cached weight
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)  # cache hit


@pytest.mark.parametrize("factorization", [None, "tucker"])
@pytest.mark.parametrize(
    "shape, n_modes",
    [
        ((21, 24), (8, 10)),  # odd first axis, larger than the kept modes
        ((21, 25), (8, 10)),  # odd last axis too
        ((7, 9), (10, 10)),  # odd and below the kept modes, odd difference (the off-centre slice)
        ((5, 8), (8, 10)),  # below the kept modes, odd difference
        ((13, 15, 17), (6, 8, 8)),
        ((5, 6, 7), (8, 8, 8)),
        ((20, 24), (7, 9)),  # odd kept modes
        ((5, 9), (7, 9)),
    ],
)
def test_matches_bin_by_bin_reference_at_any_size(factorization, shape, n_modes):
    _, ours = _pair(factorization, n_modes)
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _reference(ours, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("rows", [32, 33, 34, 35, 1, 2, 3])
@pytest.mark.parametrize("dim", [2, 3])
def test_constant_mode_passes_constant_at_even_and_odd_sizes(rows, dim):
    """Only frequency 0 kept, weight 1: an all-ones input comes back as all ones.

    neuraloperator 2.0.0 returns 1.0 at 32 or 34 rows but 0.0 at 33 or 35.
    """
    layer = SpectralConv(1, 1, (1,) * dim, bias=False, factorization=None)
    with torch.no_grad():
        layer.weight.tensor.fill_(1.0)
        out = layer(torch.ones(1, 1, rows, *(6,) * (dim - 1)))
    torch.testing.assert_close(out, torch.ones_like(out))


def test_gradients_flow_in_training():
    _, ours = _pair("tucker", (8, 10))
    ours(torch.randn(1, 3, 21, 24)).abs().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ours.parameters())


def test_gradients_match_neuraloperator_at_even_sizes():
    ref, ours = _pair("tucker", (8, 10))
    x = torch.randn(2, 3, 20, 24)
    ref(x).square().sum().backward()
    ours(x).square().sum().backward()
    for (name, p), q in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_no_cache_outside_weight_cache_block_or_in_training():
    _, ours = _pair("tucker", (8, 10))
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        ours(x)
    assert ours._cache is None  # plain inference: nothing held
    with weight_cache(ours):
        ours(x)  # gradients on: training, nothing cached
        assert ours._cache is None
        with torch.no_grad():
            ours(x)
        assert ours._cache is not None
        ours.train()
        assert ours._cache is None  # train() drops it
        with torch.no_grad():
            ours(x)
        clear_weight_caches(ours)
        assert ours._cache is None
    assert ours._cache is None  # freed on exit


def test_cache_follows_weight_updates():
    ref, ours = _pair("tucker", (8, 10))
    x = torch.randn(2, 3, 20, 24)
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.1)
    with weight_cache(ours):
        with torch.no_grad():
            ours(x)
            assert ours._cache is not None
        ours(x).abs().mean().backward()  # training step inside the block: versions change
        optimizer.step()
        with torch.no_grad():
            ref.load_state_dict(ours.state_dict())
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
            for p in ours.parameters():
                p.mul_(0.5)
            ref.load_state_dict(ours.state_dict())
            torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_writes_through_data_between_blocks_are_seen():
    """An EMA or Lookahead update writes through ``.data``, which no version counter sees."""
    ref, ours = _pair("tucker", (8, 10))
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad(), weight_cache(ours):
        before = ours(x)
    for p in ours.parameters():
        p.data.mul_(0.5)  # EMA-style write
    with torch.no_grad(), weight_cache(ours):
        after = ours(x)
        ref.load_state_dict(ours.state_dict())
        torch.testing.assert_close(after, ref(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("norm", ["forward", "ortho", "backward"])
@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((21, 23), (8, 10)), ((7, 9, 11), (6, 8, 8)), ((6, 8), (8, 10))])
@pytest.mark.parametrize("batch", [1, 2])
def test_offset_rides_on_the_zero_frequency(norm, shape, n_modes, batch):
    torch.manual_seed(0)
    layer = SpectralConv(3, 5, n_modes, bias=False, factorization="tucker", rank=0.42, fft_norm=norm)
    x = torch.randn(batch, 3, *shape)
    offset = torch.randn(5)
    with torch.no_grad():
        expected = layer(x) + offset.view(-1, *[1] * len(shape))
        torch.testing.assert_close(layer(x, offset=offset), expected)


@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((21, 23), (8, 10)), ((7, 9, 11), (6, 8, 8))])
@pytest.mark.parametrize("batch", [1, 2])
def test_complex_contraction_in_inference_matches_training_path(monkeypatch, shape, n_modes, batch):
    _, ours = _pair("tucker", n_modes)
    x = torch.randn(batch, 3, *shape)
    expected = ours(x).detach()  # autograd on: the real contraction
    monkeypatch.setattr(spectral, "COMPLEX_MIN_BYTES", 0)  # every weight takes the complex path
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), expected)
        with weight_cache(ours):
            torch.testing.assert_close(ours(x), expected)
            assert ours._cache[1].is_complex()  # cached in the layout it is used in
