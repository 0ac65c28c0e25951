"""The kernels of the spectral convolution: pruned transforms, contractions, and their adjoints.

A spectral convolution keeps a box of low modes: ``width`` non-negative frequencies of the real
FFT along the last axis and, along every other ("lead") axis, the FFT bins of the signed frequencies ``low..high``.

Layout. The kept spectrum is held with the half-spectrum axis moved in front of the lead axes,
(B, C, width, *lead_modes), so that every complex FFT runs along contiguous trailing axes (PyTorch
copies to and from a contiguous buffer for an FFT along an inner axis) and the kept modes form one
contiguous block for the contraction. The weight is laid out in the same mode order.

Training. :class:`SpectralFunction` computes the layer and its exact gradient by hand: the adjoint
of the chain is the same chain with the dual FFT normalisation and the conjugate-transposed
weight, and the factors 2 of the inverse real FFT's adjoint cancel against the 1/2 of the real
FFT's adjoint everywhere but in the weight gradient. Autograd through the separate operations
took 3.5 times the forward pass for the backward (FNOReg small's layer, 80x96, batch 8); this
takes about one forward pass plus two small matrix products.
"""

import torch
from torch.autograd.function import once_differentiable

DUAL_NORM = {"forward": "backward", "backward": "forward", "ortho": "ortho"}


# -- weights ----------------------------------------------------------------------------------
def _modes_first(weight):
    """(C_in, C_out, *lead, width) -> (C_in, C_out, width, *lead): the spectrum's mode order."""
    return weight.movedim(-1, 2)


def real_weight(weight):
    """(C_in, C_out, *lead, width) complex weight -> (2, M, C_in, C_out) real, contiguous.

    M = width x prod(lead) in the spectrum's order (:func:`forward_modes`); index 0 holds the
    real parts, 1 the imaginary parts, each laid out for a batched matmul over the modes.
    """
    w = _modes_first(weight)
    c_in, c_out = w.shape[:2]
    return torch.view_as_real(w.reshape(c_in, c_out, -1)).permute(3, 2, 0, 1).contiguous()


def complex_weight(weight):
    """(C_in, C_out, *lead, width) complex weight -> (M, C_in, C_out) complex, contiguous."""
    w = _modes_first(weight)
    c_in, c_out = w.shape[:2]
    return w.reshape(c_in, c_out, -1).permute(2, 0, 1).contiguous()


# -- contractions -----------------------------------------------------------------------------
def stacked_operand(z):
    """(B, C, *modes) complex -> contiguous (M, 2B, C) real: real parts, then imaginary parts.

    Contiguous on purpose: a permuted operand makes the same batched matmul an order of
    magnitude slower on the CPU.
    """
    batch, c = z.shape[:2]
    parts = torch.view_as_real(z.reshape(batch, c, -1)).permute(3, 2, 0, 1)  # (2, M, B, C)
    return torch.cat([parts[0], parts[1]], dim=1)


def _unstack(p, q, batch, sign, modes):
    """``P + sign * i Q``-style recombination of two (M, 2B, C) products into (B, C, *modes)."""
    if sign > 0:  # forward: Re = P_re - Q_im, Im = Q_re + P_im
        y = torch.complex(p[:, :batch] - q[:, batch:], q[:, :batch] + p[:, batch:])
    else:  # adjoint: Re = P_re + Q_im, Im = P_im - Q_re
        y = torch.complex(p[:, :batch] + q[:, batch:], p[:, batch:] - q[:, :batch])
    return y.permute(1, 2, 0).reshape(batch, y.shape[-1], *modes)


def contract_real(x, weight, c_out=None, operand=None):
    """Complex contraction ``y[b, o, m] = sum_i x[b, i, m] w[i, o, m]`` as two real batched matmuls.

    The real and imaginary parts of ``x`` are stacked along the batch axis of one contiguous
    (M, 2B, C_in) operand, so each weight entry is read once per product:
    ``P = X W_re`` and ``Q = X W_im`` give ``Re(xW) = P_re - Q_im`` and ``Im(xW) = Q_re + P_im``.

    Parameters
    ----------
    x : torch.Tensor
        (B, C_in, *modes) complex.
    weight : torch.Tensor
        (2, M, C_in, C_out) real, from :func:`real_weight`.
    c_out : int, optional
        Output channels (read from ``weight``; kept for callers that pass it).
    operand : torch.Tensor, optional
        ``stacked_operand(x)`` when the caller already has it.

    Returns
    -------
    torch.Tensor
        (B, C_out, *modes) complex.
    """
    operand = stacked_operand(x) if operand is None else operand
    return _unstack(torch.bmm(operand, weight[0]), torch.bmm(operand, weight[1]), x.shape[0], 1, x.shape[2:])


def contract_real_adjoint(grad, operand, weight, modes):
    """Gradients of :func:`contract_real`: with respect to its input and to its real weight.

    ``gx = g W^H`` and ``gW = x^H g`` per mode (PyTorch's convention for complex gradients).

    Parameters
    ----------
    grad : torch.Tensor
        (B, C_out, *modes) complex, the gradient of the contraction's output.
    operand : torch.Tensor
        (M, 2B, C_in), ``stacked_operand`` of the contraction's input.
    weight : torch.Tensor
        (2, M, C_in, C_out) real.
    modes : tuple of int
        The mode shape.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        (B, C_in, *modes) complex and (2, M, C_in, C_out) real.
    """
    batch = grad.shape[0]
    g = stacked_operand(grad)  # (M, 2B, C_out)
    gx = _unstack(torch.bmm(g, weight[0].transpose(1, 2)), torch.bmm(g, weight[1].transpose(1, 2)),
                  batch, -1, modes)
    g_swapped = torch.cat([g[:, batch:], -g[:, :batch]], dim=1)  # [G_im; -G_re]
    op_t = operand.transpose(1, 2)
    gw = torch.stack([torch.bmm(op_t, g), torch.bmm(op_t, g_swapped)])
    return gx, gw


def contract_complex(x, weight, c_out=None):
    """The contraction of :func:`contract_real` as one complex batched matmul over the modes.

    ``weight`` is (M, C_in, C_out) complex, from :func:`complex_weight`. Reads the weight once
    instead of twice; used in inference when the weight outgrows the cache. Not in training: its
    backward is far slower on the CPU.
    """
    batch, c_in, *modes = x.shape
    operand = x.reshape(batch, c_in, -1).permute(2, 0, 1).contiguous()  # (M, B, C_in)
    y = torch.bmm(operand, weight)
    return y.permute(1, 2, 0).reshape(batch, y.shape[-1], *modes)


# -- transforms -------------------------------------------------------------------------------
# A lead axis is described by (low, high, size): the kept signed frequencies low..high (low <= 0
# <= high) on an axis of `size` samples. Their FFT bins are two contiguous runs, the negative
# frequencies at the end of the axis and 0..high at its start; slices of those runs are much
# cheaper than index_select / index_copy along an inner axis of a complex tensor.
def gather_modes(z, axis, low, high, size):
    """The bins of frequencies ``low..high`` along ``axis`` of ``z``, in frequency order."""
    positive = z.narrow(axis, 0, high + 1)
    if low == 0:
        return positive
    return torch.cat([z.narrow(axis, size + low, -low), positive], dim=axis)


def scatter_modes(y, axis, low, high, size):
    """Adjoint of :func:`gather_modes`: the kept frequencies placed in their bins, zeros elsewhere."""
    shape = list(y.shape)
    shape[axis] = size
    out = y.new_zeros(shape)
    out.narrow(axis, 0, high + 1).copy_(y.narrow(axis, -low, high + 1))
    if low < 0:
        out.narrow(axis, size + low, -low).copy_(y.narrow(axis, 0, -low))
    return out


def forward_modes(x, width, lead, norm):
    """Kept spectrum of real ``x`` (B, C, *lead, n) -> (B, C, width, *kept lead modes), complex.

    Real FFT along the last axis (first ``width`` frequencies), that axis moved first, then along
    each lead axis (the contiguous one first, so every later FFT runs on fewer columns) the FFT
    and its kept frequencies; ``lead`` holds one (low, high, size) per lead axis.
    """
    z = torch.fft.rfft(x, dim=-1, norm=norm).narrow(-1, 0, width)
    z = z.movedim(-1, 2).contiguous()
    for axis in reversed(range(len(lead))):
        z = gather_modes(torch.fft.fft(z, dim=3 + axis, norm=norm), 3 + axis, *lead[axis])
    return z


def inverse_modes(y, n, lead, norm):
    """Adjoint layout of :func:`forward_modes`: kept modes (B, C, width, *kept) -> real (B, C, *lead, n).

    Each lead axis gets its kept frequencies scattered into zeros and an inverse FFT (outer axis
    first, so the last and largest runs along the contiguous axis); then the half spectrum is
    copied back last, zero-padded to ``n // 2 + 1`` in the same copy, and inverse real FFT'd to
    ``n`` samples (PyTorch's own padding of a short half spectrum costs a second pass).
    """
    for axis, (low, high, size) in enumerate(lead):
        y = torch.fft.ifft(scatter_modes(y, 3 + axis, low, high, size), dim=3 + axis, norm=norm)
    half = y.movedim(2, -1)
    padded = half.new_zeros(*half.shape[:-1], n // 2 + 1)
    padded.narrow(-1, 0, half.shape[-1]).copy_(half)
    return torch.fft.irfft(padded, n=n, dim=-1, norm=norm)


def _doubled(width, n):
    """Per kept last-axis frequency, 2 where the inverse real FFT counts it twice, else 1."""
    scale = torch.full((width,), 2.0)
    scale[0] = 1.0
    if n % 2 == 0 and width == n // 2 + 1:
        scale[-1] = 1.0
    return scale


class SpectralFunction(torch.autograd.Function):
    """Spectral convolution with a hand-written backward (training).

    ``forward(x, weight, width, lead, norm)``: ``x`` (B, C_in, *sizes) real, ``weight``
    (2, M, C_in, C_out) real from :func:`real_weight`, ``width`` and ``lead`` the kept modes
    (:func:`forward_modes`); returns (B, C_out, *sizes) real.
    """

    @staticmethod
    def forward(ctx, x, weight, width, lead, norm):
        z = forward_modes(x, width, lead, norm)
        operand = stacked_operand(z)
        y = contract_real(z, weight, operand=operand)
        ctx.save_for_backward(operand, weight)
        ctx.geometry = (z.shape[2:], x.shape[-1], width, lead, norm)
        return inverse_modes(y, x.shape[-1], lead, norm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        operand, weight = ctx.saved_tensors
        modes, n, width, lead, norm = ctx.geometry
        dual = DUAL_NORM[norm]
        # The inverse real FFT's adjoint doubles the twice-counted bins and the real FFT's adjoint
        # halves them: they cancel on the way to x, and only the weight gradient keeps the 2.
        g = forward_modes(grad.contiguous(), width, lead, dual)
        gz, gw = contract_real_adjoint(g, operand, weight, modes)
        scale = _doubled(width, n).to(gw)
        gw = gw.view(2, width, -1, *gw.shape[2:]).mul_(scale.view(1, -1, 1, 1, 1)).view_as(gw)
        gx = inverse_modes(gz, n, lead, dual) if ctx.needs_input_grad[0] else None
        return gx, gw, None, None, None
