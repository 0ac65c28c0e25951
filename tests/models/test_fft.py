"""models.fft.rfft: PyTorch's real FFT, with an irfft-based backward that gives the same gradient."""

import pytest
import torch

from models.fft import rfft


@pytest.mark.parametrize("n", [8, 9, 96, 97])
@pytest.mark.parametrize("norm", ["forward", "backward", "ortho"])
@pytest.mark.parametrize("width", [None, 3])
@pytest.mark.parametrize("dim", [-1, 2])
def test_value_and_gradient_match_torch(n, norm, width, dim):
    torch.manual_seed(0)
    shape = [2, 3, 5, 6]
    shape[dim] = n
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    keep = n // 2 + 1 if width is None else width
    ref = torch.fft.rfft(x, dim=dim, norm=norm).narrow(dim, 0, keep)
    ours = rfft(x, dim=dim, norm=norm, width=width)
    torch.testing.assert_close(ours, ref)
    g = torch.randn_like(ref)
    grad_ref = torch.autograd.grad((ref * g.conj()).real.sum(), x)[0]
    grad_ours = torch.autograd.grad((ours * g.conj()).real.sum(), x)[0]
    torch.testing.assert_close(grad_ours, grad_ref)


def test_gradcheck():
    x = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: torch.view_as_real(rfft(t, norm="ortho", width=3)), (x,))
