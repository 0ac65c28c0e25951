"""Real FFTs with a cheaper backward pass.

PyTorch differentiates ``torch.fft.rfft`` by zero-padding the gradient to the full complex
length and running a complex-to-complex FFT of the whole input, which on a CPU made the backward
of FNOReg's spectral layers the largest single cost of a training step. The adjoint of a real FFT
is an inverse real FFT with the doubly counted frequencies halved; :func:`rfft` computes it that
way (one ``irfft`` of only the kept frequencies), with results equal to PyTorch's to rounding.
"""

import functools

import torch

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


@functools.lru_cache(maxsize=64)
def _halved_bins(n, width, dtype, device):
    """(width,) weights of the adjoint: irfft counts every bin but 0 (and n/2 for even n) twice.

    Kept per size, dtype and device, made on the host and moved once: built on a GPU in every
    backward pass (``scale[0] = 1.0``), it was a copy from the host that waits for the stream and
    that a CUDA graph cannot capture. Never write into it.
    """
    scale = [1.0] + [0.5] * (width - 1)
    if n % 2 == 0 and width == n // 2 + 1 and width > 1:
        scale[-1] = 1.0
    with torch.inference_mode(False), torch.no_grad():
        return torch.tensor(scale, dtype=dtype).to(device)


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
