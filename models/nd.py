"""Dimension-generic building blocks: the one place where 2D and 3D layer classes are chosen."""

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


def conv(dim, in_channels, out_channels, kernel_size=1, bias=True, stride=1, padding=None):
    """A ``dim``-D convolution; ``padding`` defaults to 'same' for odd kernels (halving with ``stride=2``)."""
    padding = kernel_size // 2 if padding is None else padding
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
