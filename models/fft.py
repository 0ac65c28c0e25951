"""Real FFTs with a cheaper backward pass.

PyTorch differentiates ``torch.fft.rfft`` by zero-padding the gradient to the full complex
length and running a complex-to-complex FFT of the whole input, which on a CPU made the backward
of FNOReg's spectral layers the largest single cost of a training step. The adjoint of a real FFT
is an inverse real FFT with the doubly counted frequencies halved; :func:`rfft` computes it that
way (one ``irfft`` of only the kept frequencies), with results equal to PyTorch's to rounding.
"""

import torch

from utils.device import device_constant

_DUAL_NORM = {"forward": "backward", "backward": "forward", "ortho": "ortho"}


class _KeptRFFT(torch.autograd.Function):
    """``rfft(x, dim, norm).narrow(dim, 0, width)`` with an ``irfft``-based backward."""

    @staticmethod
    def forward(ctx, x, dim, width, norm):
        ctx.dim, ctx.n, ctx.norm = dim, x.shape[dim], norm
        return torch.fft.rfft(x, dim=dim, norm=norm).narrow(dim, 0, width)

    @staticmethod
    def backward(ctx, grad):
        dim, n = ctx.dim, ctx.n
        width = grad.shape[dim]
        shape = [1] * grad.ndim
        shape[dim] = width
        scale = _halved_bins(n, width, grad.real.dtype, grad.device).view(shape)
        out = torch.fft.irfft(grad * scale, n=n, dim=dim, norm=_DUAL_NORM[ctx.norm])
        return out, None, None, None


def doubled_bins(width, n):
    """The first ``width`` frequencies of a real FFT of ``n`` samples that an inverse real FFT
    counts twice (by Hermitian symmetry): ``(first, count)`` of a run.

    All but frequency 0 and, when kept at an even ``n``, the Nyquist bin n/2.
    """
    last = width - 1 if n % 2 == 0 and width == n // 2 + 1 else width
    return 1, max(last - 1, 0)


@device_constant(maxsize=64)
def _halved_bins(n, width, dtype, device):
    """(width,) weights of the adjoint: 1/2 on the :func:`doubled_bins`, else 1 (kept: built in
    every backward pass with ``scale[0] = 1.0``, it was a copy from the host on a GPU)."""
    first, count = doubled_bins(width, n)
    scale = torch.ones(width, dtype=dtype)
    scale.narrow(0, first, count).fill_(0.5)
    return scale.to(device)


def rfft(x, dim=-1, norm="backward", width=None):
    """Real FFT of ``x`` along ``dim``, keeping the first ``width`` frequencies (all by default).

    Parameters
    ----------
    x : torch.Tensor
        Real input.
    dim : int
        Axis to transform.
    norm : {"backward", "forward", "ortho"}
        As in ``torch.fft.rfft``.
    width : int, optional
        Number of non-negative frequencies to keep, at most ``n // 2 + 1``.

    Returns
    -------
    torch.Tensor
        Complex tensor with ``width`` entries along ``dim``.
    """
    norm = norm or "backward"
    full = x.shape[dim] // 2 + 1
    width = full if width is None else min(int(width), full)
    dim = dim % x.ndim
    if not (x.requires_grad and torch.is_grad_enabled()):
        return torch.fft.rfft(x, dim=dim, norm=norm).narrow(dim, 0, width)
    return _KeptRFFT.apply(x, dim, width, norm)
