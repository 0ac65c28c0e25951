"""Fast Fourier Convolution (Chi et al., NeurIPS 2020) blocks used as FNOReg's global feature extractors.

An FFC splits its channels into a local part (3x3 convolutions) and a global part (a spectral
transform whose receptive field is the whole image) with ratio ``alpha``. FNOReg uses
``alpha = 1`` (global path only), for which one FFC reduces to ``ReLU(BN(SpectralTransform(x)))``.
Tensors carry the local channels first and the global channels last, in a single tensor.
"""

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError
from utils.precision import in_float32

from .batchnorm import FOLD_CACHE, batch_norm_relu
from .fft import rfft
from .nd import batch_norm, conv, conv_with

FFT_NORMS = ("ortho", "forward", "backward")


def resolve_fft_axes(fft_axes, dim):
    """Turn the ``ffc_fft_axes`` config value into negative tensor axes.

    Parameters
    ----------
    fft_axes : {"all", "first"} or sequence of int
        "all": every spatial axis (the FFC paper, and the released 3D code).
        "first": the first spatial axis only (what the released 2D code does, as a side effect
        of a default argument). A sequence lists 0-based spatial axes explicitly.
    dim : int
        Number of spatial dimensions.

    Returns
    -------
    tuple of int
        Axes counted from the end of a (batch, channel, *spatial) tensor.
    """
    if fft_axes == "all":
        spatial = list(range(dim))
    elif fft_axes == "first":
        spatial = [0]
    elif isinstance(fft_axes, (list, tuple)) and fft_axes and all(
        isinstance(a, int) and not isinstance(a, bool) for a in fft_axes
    ):
        spatial = sorted(set(fft_axes))
        if spatial[0] < 0 or spatial[-1] >= dim:
            raise ConfigError(f"ffc_fft_axes {list(fft_axes)} must be spatial axes in 0..{dim - 1}")
    else:
        raise ConfigError(f"ffc_fft_axes must be 'all', 'first' or a list of spatial axes, got {fft_axes!r}")
    return tuple(a - dim for a in spatial)


def folded_conv(layer, bn, x):
    """``bn(layer(x))`` as one convolution when ``bn`` normalises with its running statistics.

    In evaluation a batch norm is an affine map per channel, so it folds into the convolution
    before it (weights scaled, bias shifted; a few hundred numbers), which saves a pass over the
    activations. Returns None when ``bn`` would use batch statistics (training mode, or no
    running statistics), so the caller runs the two layers as they are.

    Parameters
    ----------
    layer : torch.nn.Module
        A convolution (``weight`` of shape (C_out, C_in, ...), optional ``bias``).
    bn : torch.nn.modules.batchnorm._BatchNorm
        Batch norm over the C_out channels of ``layer``'s output.
    x : torch.Tensor
        Input of ``layer``.

    Returns
    -------
    torch.Tensor or None
        Equal to ``bn(layer(x))`` up to float rounding, or None.
    """
    # F.batch_norm's own rule: batch statistics in training, or when none are tracked.
    if bn.training or bn.running_mean is None or bn.running_var is None:
        return None
    cache = None if torch.is_grad_enabled() else getattr(bn, FOLD_CACHE, None)
    if cache is not None:  # inside models.spectral.weight_cache
        # PyTorch's batch-norm kernels update the running statistics without bumping their
        # versions; num_batches_tracked is bumped by every training-mode call (nn.BatchNorm's
        # own add_ and models.batchnorm's), so it marks those updates.
        tensors = (layer.weight, layer.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                   bn.num_batches_tracked)
        key = (id(layer), bn.eps, *[None if t is None else (t.data_ptr(), t._version) for t in tensors])
        if cache.get("key") != key:
            cache.update(key=key, folded=_fold(layer, bn))
        return conv_with(layer, x, *cache["folded"])
    return conv_with(layer, x, *_fold(layer, bn))


def _fold(layer, bn):
    """(weight, bias) of ``bn(layer(.))`` as one convolution, from ``bn``'s running statistics."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale if layer.bias is None else (layer.bias - bn.running_mean) * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return layer.weight * scale.view(-1, *[1] * (layer.weight.ndim - 1)), shift


def _relu(x):
    """ReLU of a fresh intermediate ``x``: in place when autograd is off (saves a copy)."""
    return x.relu_() if not torch.is_grad_enabled() else F.relu(x)


def _add(x, y):
    """``x + y``, written into ``x`` (a fresh intermediate) when autograd is off."""
    return x.add_(y) if not torch.is_grad_enabled() else x + y


class FourierUnit(nn.Module):
    """Pointwise convolution in the frequency domain.

    Real FFT over ``fft_axes``; real and imaginary parts stacked as channels; 1x1 conv (with
    bias), batch norm and ReLU on the spectrum; back to complex; inverse real FFT to the input size.
    """

    def __init__(self, dim, channels, fft_axes="all", fft_norm="ortho"):
        super().__init__()
        if fft_norm not in FFT_NORMS:
            raise ConfigError(f"ffc_fft_norm must be one of {FFT_NORMS}, got {fft_norm!r}")
        self.axes = resolve_fft_axes(fft_axes, dim)
        self.fft_norm = fft_norm
        self.conv = conv(dim, 2 * channels, 2 * channels, 1, bias=True)
        self.bn = batch_norm(dim, 2 * channels)

    @in_float32  # no bfloat16 FFTs
    def forward(self, x):
        sizes = [x.shape[a] for a in self.axes]
        n = len(self.axes)
        if not torch.is_grad_enabled() and n > 1 and self.axes[-1] == -1:
            return self._forward_transposed(x, sizes)
        # rfftn, with the real FFT's cheaper backward (models.fft.rfft).
        spec = rfft(x, dim=self.axes[-1], norm=self.fft_norm)
        if n > 1:
            spec = torch.fft.fftn(spec, dim=self.axes[:-1], norm=self.fft_norm)
        real, imag = self._spectral_conv(spec)
        return torch.fft.irfftn(torch.complex(real, imag), s=sizes, dim=self.axes, norm=self.fft_norm)

    def _spectral_conv(self, spec):
        """Conv, batch norm (folded in evaluation) and ReLU on the stacked parts; (real, imag)."""
        y = torch.cat([spec.real, spec.imag], dim=1)
        folded = folded_conv(self.conv, self.bn, y)
        y = batch_norm_relu(self.bn, self.conv(y)) if folded is None else _relu(folded)
        return y.chunk(2, dim=1)

    def _forward_transposed(self, x, sizes):
        """Inference with the half-spectrum (last) axis moved first, any other axes transformed too.

        The layers between the transforms are pointwise, so the spectrum's memory layout is
        free: with the real-FFT axis first, the other transforms run along contiguous trailing
        axes, where PyTorch otherwise transposes to and fro for each of them (160x192, 8
        channels: 4.5 -> 3.7 ms a unit on 1 thread; 40x48x56: 15.7 -> 10.9 ms).
        """
        nd = x.ndim
        # Where the other transformed axes are once the last one moved to position 2: one further on.
        rest = tuple(nd + a + 1 for a in self.axes[:-1])
        spec = torch.fft.rfft(x, dim=-1, norm=self.fft_norm)
        spec = spec.permute(0, 1, nd - 1, *range(2, nd - 1)).contiguous()
        spec = torch.fft.fftn(spec, dim=rest, norm=self.fft_norm)
        real, imag = self._spectral_conv(spec)
        spec = torch.fft.ifftn(torch.complex(real, imag), dim=rest, norm=self.fft_norm)
        spec = spec.permute(0, 1, *range(3, nd), 2).contiguous()
        return torch.fft.irfft(spec, n=sizes[-1], dim=-1, norm=self.fft_norm)


class SpectralTransform(nn.Module):
    """FFC's global path: reduce to ``out/2`` channels, Fourier unit with a skip, expand."""

    def __init__(self, dim, in_channels, out_channels, fft_axes="all", fft_norm="ortho"):
        super().__init__()
        hidden = out_channels // 2
        if hidden < 1:
            raise ConfigError(f"a spectral transform needs at least 2 output channels, got {out_channels}")
        # Convolutions followed by batch norm carry no bias (it would be cancelled).
        self.reduce = nn.Sequential(conv(dim, in_channels, hidden, 1, bias=False), batch_norm(dim, hidden), nn.ReLU())
        self.fourier = FourierUnit(dim, hidden, fft_axes, fft_norm)
        self.expand = conv(dim, hidden, out_channels, 1, bias=False)

    def forward(self, x, bn=None, relu=False):
        """``expand(fourier(z) + z)`` with ``z = reduce(x)``; ``bn``: a batch norm to apply last.

        With ``bn`` the result is ``bn(...)``, and with ``relu`` also ``relu(bn(...))``; in
        evaluation the batch norms fold into the 1x1 convolutions before them
        (:func:`folded_conv`), in training each batch norm and its ReLU run fused
        (:func:`models.batchnorm.batch_norm_relu`).
        """
        conv_in, bn_in, _ = self.reduce
        z = folded_conv(conv_in, bn_in, x)
        z = batch_norm_relu(bn_in, conv_in(x)) if z is None else _relu(z)
        y = _add(self.fourier(z), z)
        if bn is None:
            return self.expand(y)
        out = folded_conv(self.expand, bn, y)
        if out is not None:
            return _relu(out) if relu else out
        return batch_norm_relu(bn, self.expand(y)) if relu else bn(self.expand(y))


def split_channels(channels, alpha):
    """Return (local, global) channel counts for a global ratio ``alpha`` in [0, 1]."""
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"ffc_alpha must lie in [0, 1], got {alpha!r}")
    n_global = int(round(channels * alpha))
    return channels - n_global, n_global


class FFC(nn.Module):
    """Fast Fourier Convolution with global ratio ``alpha`` on input and output.

    ``y_local = ReLU(BN(conv3x3(x_local) + conv3x3(x_global)))`` and
    ``y_global = ReLU(BN(conv3x3(x_local) + SpectralTransform(x_global)))``; paths whose input
    or output has no channels are absent, so ``alpha = 1`` leaves ``ReLU(BN(SpectralTransform(x)))``.
    """

    def __init__(self, dim, in_channels, out_channels, alpha=1.0, fft_axes="all", fft_norm="ortho"):
        super().__init__()
        self.in_local, in_global = split_channels(in_channels, alpha)
        out_local, out_global = split_channels(out_channels, alpha)

        def local_conv(c_in, c_out):
            return conv(dim, c_in, c_out, 3, bias=False) if c_in and c_out else None

        self.local_to_local = local_conv(self.in_local, out_local)
        self.global_to_local = local_conv(in_global, out_local)
        self.local_to_global = local_conv(self.in_local, out_global)
        self.global_to_global = (
            SpectralTransform(dim, in_global, out_global, fft_axes, fft_norm) if in_global and out_global else None
        )
        self.bn_local = batch_norm(dim, out_local) if out_local else None
        self.bn_global = batch_norm(dim, out_global) if out_global else None

    @staticmethod
    def _sum(*terms):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def forward(self, x):
        x_local, x_global = x[:, : self.in_local], x[:, self.in_local :]

        def apply(layer, inp):
            return layer(inp) if layer is not None else None

        outputs = []
        for bn, from_local, from_global in (
            (self.bn_local, self.local_to_local, self.global_to_local),
            (self.bn_global, self.local_to_global, self.global_to_global),
        ):
            if bn is None:
                continue
            if from_local is None and isinstance(from_global, SpectralTransform):
                # Global path only (alpha = 1): the batch norm can fold into its last convolution.
                outputs.append(from_global(x_global, bn=bn, relu=True))
                continue
            y = self._sum(apply(from_local, x_local), apply(from_global, x_global))
            outputs.append(batch_norm_relu(bn, y))
        return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


class FFCResidualBlock(nn.Module):
    """``x + FFC2(FFC1(x))``: FNOReg's global encoder / decoder block."""

    def __init__(self, dim, channels, alpha=1.0, fft_axes="all", fft_norm="ortho"):
        super().__init__()
        self.ffc1 = FFC(dim, channels, channels, alpha, fft_axes, fft_norm)
        self.ffc2 = FFC(dim, channels, channels, alpha, fft_axes, fft_norm)

    def forward(self, x):
        return _add(self.ffc2(self.ffc1(x)), x)
