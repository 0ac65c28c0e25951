"""Dimension-generic building blocks: the one place where 2D and 3D layer classes are chosen."""

from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BATCH_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def check_dim(dim):
    """Return ``dim`` if it is 2 or 3, else raise a ValueError naming it."""
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    return dim


def conv(dim, in_channels, out_channels, kernel_size=1, bias=True):
    """A ``dim``-D convolution with 'same' padding for odd kernels."""
    return _CONV[dim](in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)


def batch_norm(dim, channels):
    """A ``dim``-D batch normalisation layer."""
    return _BATCH_NORM[dim](channels)
