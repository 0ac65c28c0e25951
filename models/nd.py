"""Dimension-generic building blocks: the one place where 2D and 3D layer classes are chosen."""

import torch
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_INSTANCE_NORM = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_CONV_TRANSPOSE = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def check_dim(dim):
    """Return ``dim`` if it is 2 or 3, else raise a ValueError naming it."""
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    return dim


def pointwise(x, weight, bias=None):
    """A 1x1 convolution as a batched matrix product over the flattened spatial axes.

    Parameters
    ----------
    x : torch.Tensor
        (B, C_in, *spatial).
    weight : torch.Tensor
        (C_out, C_in, 1, ...) or (C_out, C_in).
    bias : torch.Tensor, optional
        (C_out,).

    Returns
    -------
    torch.Tensor
        (B, C_out, *spatial), equal to ``conv(x, weight, bias)`` up to rounding.
    """
    b, c = x.shape[:2]
    w = weight.reshape(weight.shape[0], c).expand(b, -1, -1)
    flat = x.reshape(b, c, -1)
    y = torch.bmm(w, flat) if bias is None else torch.baddbmm(bias.view(1, -1, 1), w, flat)
    return y.view(b, -1, *x.shape[2:])


class _PointwiseMixin:
    """A 1x1, stride-1 convolution that runs as a batched matrix product on the CPU.

    On the CPU, oneDNN's 1x1 convolution in NCHW layout reorders its operands on every call: at
    160x192 and 16 channels it took 2.5 ms where the same product as ``baddbmm`` takes 0.2 ms, and
    forward + backward at batch 8, 80x96 took 7.6 ms against 1.4 ms (benchmarks/README.md). The
    parameters, their initialisation and the state-dict keys are those of ``nn.Conv<d>d``, so
    checkpoints are unchanged; other devices keep the library convolution (cuDNN).
    """

    def forward(self, x):
        if x.device.type != "cpu":
            return super().forward(x)
        return pointwise(x, self.weight, self.bias)


class PointwiseConv2d(_PointwiseMixin, nn.Conv2d):
    """2D 1x1 convolution (see :class:`_PointwiseMixin`)."""


class PointwiseConv3d(_PointwiseMixin, nn.Conv3d):
    """3D 1x1 convolution (see :class:`_PointwiseMixin`)."""


_POINTWISE = {2: PointwiseConv2d, 3: PointwiseConv3d}


def conv_with(layer, x, weight, bias):
    """Run convolution ``layer`` on ``x`` with other ``weight`` and ``bias`` (e.g. folded ones).

    Parameters
    ----------
    layer : torch.nn.modules.conv._ConvNd
        Supplies stride, padding, dilation and groups (and the CPU matrix-product path of a
        :class:`PointwiseConv2d` / :class:`PointwiseConv3d`).
    x : torch.Tensor
        Input.
    weight, bias : torch.Tensor
        Of the shapes of ``layer.weight`` and ``layer.bias``; ``bias`` may be None.

    Returns
    -------
    torch.Tensor
        ``layer``'s convolution of ``x`` with these parameters.
    """
    if isinstance(layer, _PointwiseMixin) and x.device.type == "cpu":
        return pointwise(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


def conv(dim, in_channels, out_channels, kernel_size=1, bias=True, stride=1, padding=None):
    """A ``dim``-D convolution; ``padding`` defaults to 'same' for odd kernels (halving with ``stride=2``).

    A 1x1 convolution with stride 1 and no padding is a :class:`PointwiseConv2d` /
    :class:`PointwiseConv3d`: the same layer, computed as a matrix product on the CPU.
    """
    padding = kernel_size // 2 if padding is None else padding
    if kernel_size == 1 and stride == 1 and padding == 0 and dim in _POINTWISE:
        return _POINTWISE[dim](in_channels, out_channels, 1, bias=bias)
    return _CONV[dim](in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)


def conv_transpose(dim, in_channels, out_channels, kernel_size=2, stride=2, bias=True):
    """A ``dim``-D transposed convolution (kernel 2, stride 2 doubles every side)."""
    return _CONV_TRANSPOSE[dim](in_channels, out_channels, kernel_size, stride=stride, bias=bias)


def max_pool(dim, kernel_size=2):
    """A ``dim``-D max pooling with stride equal to its kernel."""
    return _MAX_POOL[dim](kernel_size)


def avg_pool(dim, kernel_size, stride=None, padding=0):
    """A ``dim``-D average pooling."""
    return _AVG_POOL[dim](kernel_size, stride=stride, padding=padding)


def instance_norm(dim, channels):
    """A ``dim``-D instance normalisation (no affine parameters, PyTorch's default)."""
    return _INSTANCE_NORM[dim](channels)


def batch_norm(dim, channels):
    """A ``dim``-D batch normalisation layer."""
    return _BATCH_NORM[dim](channels)
