"""The kernels of the spectral convolution: pruned transforms, contractions, and their adjoints.

A spectral convolution keeps a box of low modes: ``width`` non-negative frequencies of the real
FFT along the last axis and, along every other ("lead") axis, the bins of the signed frequencies
``low..high``.

Layout. The kept spectrum is held with the half-spectrum axis moved in front of the lead axes,
(B, C, width, *lead_modes), so that every complex FFT runs along contiguous trailing axes (PyTorch
copies to and from a contiguous buffer for an FFT along an inner axis) and the kept modes form one
contiguous block for the contraction. The weight is laid out in the same mode order.

Training. :class:`SpectralFunction` computes the layer and its exact gradient by hand: the adjoint
of the chain is the same chain with the dual FFT normalisation and the conjugate-transposed
weight, and the factors 2 of the inverse real FFT's adjoint cancel against the 1/2 of the real
FFT's adjoint everywhere but in the weight gradient. Autograd through the separate operations
took about three times the forward pass for the backward (FNOReg small's layer, 80x96, batch 8);
this takes about one forward pass plus one more small matrix product.
"""

import torch
from torch.autograd.function import once_differentiable

from .fft import doubled_bins

# The adjoint of an FFT with one normalisation is the inverse FFT with the other (None: "backward").
DUAL_NORM = {"forward": "backward", "backward": "forward", "ortho": "ortho", None: "forward"}


# -- weights ----------------------------------------------------------------------------------
def complex_weight(weight):
    """(C_in, C_out, *lead, width) complex weight -> (M, C_in, C_out) complex, contiguous.

    M = width x prod(lead) in the spectrum's order (:func:`forward_modes`): the layout of every
    contraction here. Its real view, (M, C_in, 2 C_out) with real and imaginary parts
    interleaved, is the real matrix that :func:`contract_real` multiplies by.
    """
    w = weight.movedim(-1, 2)  # the half-spectrum axis first, as in the spectrum
    c_in, c_out = w.shape[:2]
    return w.reshape(c_in, c_out, -1).permute(2, 0, 1).contiguous()


def tucker_weight(core, factors, slices):
    """A Tucker-factorised weight, rebuilt straight into the layout of :func:`complex_weight`.

    ``W[i, o, *m] = sum G[a, b, *c] U_i[i, a] U_o[o, b] prod_j U_j[m_j, c_j]`` restricted to the
    kept modes ``slices`` (one per mode axis; slicing a weight is slicing its factors' rows). The
    core is contracted with one factor at a time, the half-spectrum axis first, then the other
    mode axes, then the channels, so the result comes out as (width, *lead, C_in, C_out), the
    contraction's order, without the final permute of a rebuilt (C_in, C_out, *modes) tensor; and
    the large mode factors act while the tensor is smallest. Same values as tensorly's
    reconstruction to rounding; forward + backward took 1.4-1.5x less time (3D preset: 390-455
    -> 250-300 ms a layer, where it was 89 % of a training layer's time; 2D small: 3.7 -> 2.5 ms).

    Parameters
    ----------
    core : torch.Tensor
        (R_in, R_out, *R_modes) complex.
    factors : sequence of torch.Tensor
        ``[U_in (C_in, R_in), U_out (C_out, R_out), *U_modes (n_j, R_j)]``.
    slices : tuple of slice
        Kept rows of each mode factor, as for the dense weight.

    Returns
    -------
    torch.Tensor
        (M, C_in, C_out) complex, contiguous.
    """
    n = core.ndim
    factors = list(factors[:2]) + [u[s] for u, s in zip(factors[2:], slices)]
    labels = list(range(n))  # which weight axis each axis of t stands for
    t = core
    for axis in [n - 1, *range(2, n - 1), 0, 1]:  # tensordot appends each new axis last
        t = torch.tensordot(t, factors[axis], dims=([labels.index(axis)], [1]))
        labels.remove(axis)
    return t.reshape(-1, factors[0].shape[0], factors[1].shape[0])


def _interleaved(weight):
    """(M, C_in, C_out) complex -> its real view (M, C_in, 2 C_out): [re, im] per output channel."""
    m, c_in, c_out = weight.shape
    return torch.view_as_real(weight).view(m, c_in, 2 * c_out)


# -- contractions -----------------------------------------------------------------------------
def stacked_operand(z):
    """(B, C, *modes) complex -> contiguous (M, 2B, C) real: real parts, then imaginary parts.

    Contiguous on purpose: a permuted operand makes the same batched matmul an order of
    magnitude slower on the CPU.
    """
    batch, c = z.shape[:2]
    parts = torch.view_as_real(z.reshape(batch, c, -1)).permute(2, 3, 0, 1)  # (M, 2, B, C)
    # One copy; at batch 1 the reshape alone would be a strided view (hence the contiguous()).
    return parts.reshape(-1, 2 * batch, c).contiguous()


def contract_real(x, weight, operand=None):
    """Complex contraction ``y[b, o, m] = sum_i x[b, i, m] w[i, o, m]`` as one real batched matmul.

    With ``X = [x_re; x_im]`` stacked along the batch axis (M, 2B, C_in) and the weight's real
    view ``V`` (M, C_in, 2 C_out), real and imaginary parts interleaved, ``P = X V`` holds every
    product of parts once: ``Re y = x_re w_re - x_im w_im`` and ``Im y = x_re w_im + x_im w_re``;
    read as complex numbers its two halves are ``x_re w`` and ``x_im w``, so ``y`` is their sum
    with the second times ``i``.

    Parameters
    ----------
    x : torch.Tensor
        (B, C_in, *modes) complex.
    weight : torch.Tensor
        (M, C_in, C_out) complex, from :func:`complex_weight`.
    operand : torch.Tensor, optional
        ``stacked_operand(x)`` when the caller already has it.

    Returns
    -------
    torch.Tensor
        (B, C_out, *modes) complex.
    """
    batch = x.shape[0]
    operand = stacked_operand(x) if operand is None else operand
    # Read as complex, P's rows are x_re w and x_im w: y = x_re w + i x_im w in one pass.
    p = torch.view_as_complex(torch.bmm(operand, _interleaved(weight)).view(operand.shape[0], 2 * batch, -1, 2))
    y = torch.add(p[:, :batch], p[:, batch:], alpha=1j)
    return y.permute(1, 2, 0).reshape(batch, weight.shape[-1], *x.shape[2:])


def contract_real_adjoint(grad, operand, weight, modes):
    """Gradients of :func:`contract_real` with respect to its input and its weight.

    ``gx = g W^H`` and ``gW = x^H g`` per mode (PyTorch's convention for complex gradients),
    both through the same real matrices: the gradient of ``P`` is ``[g; -i g]`` in interleaved
    real form, so ``gX = G V^T`` and ``gV = X^T G``.

    Parameters
    ----------
    grad : torch.Tensor
        (B, C_out, *modes) complex, the gradient of the contraction's output.
    operand : torch.Tensor
        (M, 2B, C_in), ``stacked_operand`` of the contraction's input.
    weight : torch.Tensor
        (M, C_in, C_out) complex.
    modes : tuple of int
        The mode shape.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        (B, C_in, *modes) complex and (M, C_in, C_out) complex.
    """
    batch, c_out = grad.shape[:2]
    m = operand.shape[0]
    g = grad.reshape(batch, c_out, m).permute(2, 0, 1)  # (M, B, C_out)
    stacked = torch.empty(m, 2, batch, c_out, dtype=grad.dtype, device=grad.device)
    stacked[:, 0] = g
    torch.mul(g, -1j, out=stacked[:, 1])
    stacked = torch.view_as_real(stacked).view(m, 2 * batch, 2 * c_out)
    gx = torch.bmm(stacked, _interleaved(weight).transpose(1, 2))  # (M, 2B, C_in)
    gx = torch.complex(gx[:, :batch], gx[:, batch:]).permute(1, 2, 0).reshape(batch, -1, *modes)
    gw = torch.view_as_complex(torch.bmm(operand.transpose(1, 2), stacked).view(m, -1, c_out, 2))
    return gx, gw


def contract_complex(x, weight):
    """The contraction of :func:`contract_real` as one complex batched matmul over the modes.

    ``weight`` is (M, C_in, C_out) complex, from :func:`complex_weight`. Reads the weight in one
    pass of complex arithmetic; used in inference when the weight outgrows the cache. Not in
    training: its backward is far slower on the CPU.
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
    out = y.new_empty(shape)
    out.narrow(axis, 0, high + 1).copy_(y.narrow(axis, -low, high + 1))
    if low < 0:
        out.narrow(axis, size + low, -low).copy_(y.narrow(axis, 0, -low))
    out.narrow(axis, high + 1, size + low - high - 1).zero_()  # only the bins in between
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
    first, so the last and largest runs along the contiguous axis); then the half spectrum goes
    back last, copied straight into an ``n // 2 + 1``-bin buffer whose other bins are zeroed, and
    is inverse real FFT'd to ``n`` samples (PyTorch's own padding of a short half spectrum costs
    a second pass).
    """
    for axis, (low, high, size) in enumerate(lead):
        y = torch.fft.ifft(scatter_modes(y, 3 + axis, low, high, size), dim=3 + axis, norm=norm)
    half = y.movedim(2, -1)
    width = half.shape[-1]
    padded = half.new_empty(*half.shape[:-1], n // 2 + 1)
    padded.narrow(-1, 0, width).copy_(half)
    padded.narrow(-1, width, n // 2 + 1 - width).zero_()
    return torch.fft.irfft(padded, n=n, dim=-1, norm=norm)


def dc_gain(sizes, norm):
    """Zero-frequency coefficient whose inverse transform (``norm``) is 1 on every sample."""
    n = 1
    for size in sizes:
        n *= size
    return {"forward": 1.0, "ortho": n**0.5, "backward": float(n)}[norm or "backward"]


def add_at_zero_frequency(y, offset, lead, sizes, norm):
    """Add ``offset`` (C,) to every output sample through the kept modes' zero frequency, in place.

    ``y`` is a kept spectrum (B, C, width, *kept) of :func:`forward_modes`; after
    :func:`inverse_modes` the result equals adding ``offset`` to every sample, up to rounding,
    without a pass over the output.
    """
    zero = (slice(None), slice(None), 0, *[-low for low, _, _ in lead])  # frequency 0's position
    y[zero].add_(offset, alpha=dc_gain(sizes, norm))  # in place through the view: no write-back
    return y


def _contracted_modes(x, weight, width, lead, norm):
    """Forward half of a training spectral convolution: (contracted kept modes, saved operand)."""
    z = forward_modes(x, width, lead, norm)
    operand = stacked_operand(z)
    return contract_real(z, weight, operand=operand), operand


def _spectral_adjoint(grad, operand, weight, n, width, lead, norm):
    """Backward half: (gradient of the contraction's input modes, gradient of the weight).

    The inverse real FFT's adjoint doubles the twice-counted bins and the real FFT's adjoint
    halves them: they cancel on the way to the input (:func:`inverse_modes` of the first result,
    with the dual normalisation), and only the weight gradient keeps the 2.
    """
    g = forward_modes(grad, width, lead, DUAL_NORM[norm])
    gz, gw = contract_real_adjoint(g, operand, weight, g.shape[2:])
    first, count = doubled_bins(width, n)  # a range, not a factor tensor made on the host
    gw.view(width, -1, *gw.shape[1:]).narrow(0, first, count).mul_(2.0)
    return gz, gw


class SpectralFunction(torch.autograd.Function):
    """Spectral convolution with a hand-written backward (training).

    ``forward(x, weight, width, lead, norm)``: ``x`` (B, C_in, *sizes) real, ``weight``
    (M, C_in, C_out) complex from :func:`complex_weight`, ``width`` and ``lead`` the kept modes
    (:func:`forward_modes`); returns (B, C_out, *sizes) real.
    """

    @staticmethod
    def forward(ctx, x, weight, width, lead, norm):
        y, operand = _contracted_modes(x, weight, width, lead, norm)
        ctx.save_for_backward(operand, weight)
        ctx.geometry = (x.shape[-1], width, lead, norm)
        return inverse_modes(y, x.shape[-1], lead, norm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        operand, weight = ctx.saved_tensors
        n, width, lead, norm = ctx.geometry
        gz, gw = _spectral_adjoint(grad.contiguous(), operand, weight, n, width, lead, norm)
        gx = inverse_modes(gz, n, lead, DUAL_NORM[norm]) if ctx.needs_input_grad[0] else None
        return gx, gw, None, None, None


class FourierLayerFunction(torch.autograd.Function):
    """A whole Fourier layer in training: ``GELU(K x + W x + b)``, plus ``x`` when ``residual``.

    ``K`` is the spectral convolution of :class:`SpectralFunction`, ``W`` (C_out, C_in) a 1x1
    convolution and ``b`` its bias. One function instead of five autograd nodes saves passes over
    the activations, which bound the layer's time on a CPU: ``b`` rides on the spectrum's zero
    frequency, ``W x`` accumulates into the spectral output (``baddbmm_``), the residual is added
    in place, and in the backward the three contributions to the input gradient accumulate into
    one tensor.

    ``forward(x, weight, pw_weight, pw_bias, width, lead, norm, residual)``; ``pw_bias`` may be
    None. Returns (B, C_out, *sizes).
    """

    @staticmethod
    def forward(ctx, x, weight, pw_weight, pw_bias, width, lead, norm, residual):
        batch, c_in = x.shape[:2]
        y, operand = _contracted_modes(x, weight, width, lead, norm)
        if pw_bias is not None:
            add_at_zero_frequency(y, pw_bias, lead, x.shape[2:], norm)
        pre = inverse_modes(y, x.shape[-1], lead, norm)
        flat = x.reshape(batch, c_in, -1)
        pre.view(batch, pre.shape[1], -1).baddbmm_(pw_weight.expand(batch, -1, -1), flat)
        out = torch.nn.functional.gelu(pre)
        if residual:
            out.add_(x)
        ctx.save_for_backward(operand, weight, pw_weight, flat, pre)
        ctx.geometry = (x.shape[-1], width, lead, norm, residual, pw_bias is not None)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        operand, weight, pw_weight, flat, pre = ctx.saved_tensors
        n, width, lead, norm, residual, has_bias = ctx.geometry
        batch, c_out = grad.shape[:2]
        grad_pre = torch.ops.aten.gelu_backward(grad.contiguous(), pre)
        gz, gw = _spectral_adjoint(grad_pre, operand, weight, n, width, lead, norm)
        grad_flat = grad_pre.view(batch, c_out, -1)
        gx = None
        if ctx.needs_input_grad[0]:
            gx = inverse_modes(gz, n, lead, DUAL_NORM[norm])
            gx.view(batch, gx.shape[1], -1).baddbmm_(pw_weight.t().expand(batch, -1, -1), grad_flat)
            if residual:
                gx.add_(grad)
        g_pw = torch.bmm(grad_flat, flat.transpose(1, 2)).sum(0) if ctx.needs_input_grad[2] else None
        g_bias = grad_flat.sum((0, 2)) if has_bias and ctx.needs_input_grad[3] else None
        return gx, gw, g_pw, g_bias, None, None, None, None
