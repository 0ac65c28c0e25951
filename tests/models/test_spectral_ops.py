"""models.spectral_ops: the spectral convolution's kernels and its hand-written backward.

The backward of :class:`SpectralFunction` is checked three ways: ``gradcheck`` in double
precision, against autograd through the same chain of PyTorch operations, and (through the
layer) against autograd through a bin-by-bin reference with the full-size kernel, at even and
odd sizes, sizes below the kept modes, and the real FFT's Nyquist bin kept or not.
"""

import pytest
import torch

from models.spectral import SpectralConv, kept_frequencies
from models.spectral_ops import (
    SpectralFunction,
    complex_weight,
    contract_complex,
    contract_real,
    forward_modes,
    gather_modes,
    inverse_modes,
    scatter_modes,
    tucker_weight,
)


def _geometry(sizes, kept):
    """(width, lead) for input ``sizes`` and kept modes ``kept`` (last entry: n // 2 + 1 style)."""
    width = min(kept[-1], sizes[-1] // 2 + 1)
    lead = tuple((*kept_frequencies(s, k), s) for s, k in zip(sizes[:-1], kept))
    return width, lead


def _chain(x, weight, width, lead, norm):
    """The same computation as separate PyTorch operations, differentiated by autograd."""
    return inverse_modes(contract_real(forward_modes(x, width, lead, norm), weight), x.shape[-1], lead, norm)


CASES = [
    ((8, 10), (4, 3)),
    ((9, 11), (4, 3)),
    ((7, 8), (4, 5)),  # width n // 2 + 1 with even n: the Nyquist bin kept
    ((5, 9), (8, 6)),  # fewer rows than kept modes
    ((4, 5, 6), (2, 4, 3)),
    ((3, 5, 5), (4, 2, 3)),  # odd, fewer planes than kept modes
]


@pytest.mark.parametrize("sizes, kept", CASES)
@pytest.mark.parametrize("norm", ["forward", "backward", "ortho", None])
def test_gradcheck(sizes, kept, norm):
    torch.manual_seed(0)
    width, lead = _geometry(sizes, kept)
    x = torch.randn(2, 2, *sizes, dtype=torch.float64, requires_grad=True)
    modes = width * int(torch.tensor([high - low + 1 for low, high, _ in lead]).prod())
    weight = torch.randn(modes, 2, 2, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, w: SpectralFunction.apply(a, w, width, lead, norm), (x, weight))


@pytest.mark.parametrize("sizes, kept", CASES)
def test_matches_autograd_through_the_chain(sizes, kept):
    torch.manual_seed(1)
    width, lead = _geometry(sizes, kept)
    x = torch.randn(3, 4, *sizes, requires_grad=True)
    modes = width * int(torch.tensor([high - low + 1 for low, high, _ in lead]).prod())
    weight = torch.randn(modes, 4, 5, dtype=torch.complex64, requires_grad=True)
    ours = SpectralFunction.apply(x, weight, width, lead, "forward")
    ref = _chain(x, weight, width, lead, "forward")
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(ours, (x, weight), g), torch.autograd.grad(ref, (x, weight), g),
                               rtol=1e-4, atol=1e-5)


def _bin_by_bin(weight, x, norm):
    """Full-size kernel, one complex einsum; differentiable in ``weight`` and ``x``."""
    *lead, last = x.shape[2:]
    spectrum = torch.fft.rfftn(x, dim=tuple(range(2, x.ndim)), norm=norm)
    kept_last = min(weight.shape[-1], spectrum.shape[-1])
    kernel = torch.zeros(*weight.shape[:2], *spectrum.shape[2:], dtype=spectrum.dtype)
    grids = torch.meshgrid(*[torch.arange(-(k // 2), k - k // 2) for k in weight.shape[2:-1]], indexing="ij")
    keep = torch.ones_like(grids[0], dtype=torch.bool)
    for g, size in zip(grids, lead):
        keep &= (g >= -(size // 2)) & (g <= size - size // 2 - 1)
    bins = tuple(g[keep] % size for g, size in zip(grids, lead))
    widx = tuple(g[keep] + k // 2 for g, k in zip(grids, weight.shape[2:-1]))
    kernel[(slice(None), slice(None), *bins, slice(0, kept_last))] = weight[
        (slice(None), slice(None), *widx, slice(0, kept_last))
    ]
    out = torch.einsum("bi...,io...->bo...", spectrum, kernel)
    return torch.fft.irfftn(out, s=x.shape[2:], dim=tuple(range(2, x.ndim)), norm=norm)


@pytest.mark.parametrize("shape, n_modes", [((20, 24), (8, 10)), ((21, 23), (8, 10)), ((5, 9), (8, 10)),
                                            ((7, 8), (4, 8)), ((7, 9, 11), (6, 8, 8)), ((5, 6, 7), (8, 8, 8))])
@pytest.mark.parametrize("factorization", [None, "tucker"])
def test_layer_gradients_match_bin_by_bin_reference(shape, n_modes, factorization):
    torch.manual_seed(2)
    layer = SpectralConv(3, 4, n_modes, bias=False, factorization=factorization, rank=0.42)
    x = torch.randn(2, 3, *shape, requires_grad=True)
    params = list(layer.parameters())
    ours = layer(x)
    dense = layer.weight if torch.is_tensor(layer.weight) else layer.weight.to_tensor()
    ref = _bin_by_bin(dense, x, layer.fft_norm)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, [x, *params], g), torch.autograd.grad(ref, [x, *params], g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("low, high, size", [(-4, 3, 12), (-4, 3, 8), (0, 2, 5), (-2, 2, 5)])
def test_gather_and_scatter_are_adjoint_and_pick_the_right_bins(low, high, size):
    z = torch.randn(2, 3, size, dtype=torch.complex64)
    bins = torch.arange(low, high + 1) % size
    torch.testing.assert_close(gather_modes(z, 2, low, high, size), z.index_select(2, bins))
    y = torch.randn(2, 3, high - low + 1, dtype=torch.complex64)
    torch.testing.assert_close(scatter_modes(y, 2, low, high, size),
                               torch.zeros_like(z).index_copy(2, bins, y))


def test_complex_weight_orders_modes_as_the_spectrum():
    """The weight's modes are laid out half-spectrum axis first, as forward_modes lays out the input."""
    w = torch.randn(3, 4, 5, 6, dtype=torch.complex64)  # (C_in, C_out, lead, width)
    torch.testing.assert_close(complex_weight(w), w.permute(3, 2, 0, 1).reshape(30, 3, 4))


@pytest.mark.parametrize("batch", [1, 3])
def test_real_and_complex_contractions_agree_with_einsum(batch):
    torch.manual_seed(3)
    x = torch.randn(batch, 4, 5, 6, dtype=torch.complex64)
    w = torch.randn(30, 4, 7, dtype=torch.complex64)
    expected = torch.einsum("bim,mio->bom", x.reshape(batch, 4, 30), w).reshape(batch, 7, 5, 6)
    torch.testing.assert_close(contract_real(x, w), expected)
    torch.testing.assert_close(contract_complex(x, w), expected)


@pytest.mark.parametrize("n_modes, sizes", [((8, 10), (20, 24)), ((8, 10), (5, 7)), ((6, 8, 8), (7, 9, 11)),
                                            ((6, 8, 8), (4, 5, 6))])
def test_tucker_weight_equals_the_rebuilt_dense_weight_and_its_gradients(n_modes, sizes):
    """Rebuilt straight into the contraction's layout: tensorly's values and gradients."""
    torch.manual_seed(4)
    layer = SpectralConv(3, 5, n_modes, bias=False, factorization="tucker", rank=0.42)
    slices, _, _ = layer.kept_modes(sizes)
    ours = tucker_weight(layer.weight.core, layer.weight.factors, slices)
    ref = complex_weight(layer.weight[(slice(None), slice(None), *slices)].to_tensor())
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(torch.view_as_real(ref))
    params = list(layer.parameters())
    for a, b in zip(torch.autograd.grad(torch.view_as_real(ours), params, g),
                    torch.autograd.grad(torch.view_as_real(ref), params, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
