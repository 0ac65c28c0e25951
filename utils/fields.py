"""Displacement-field conventions shared by models, warping, losses and metrics.

Shape checks: each raises :class:`utils.errors.ShapeError` with a message that names the tensor
and its shape, instead of letting a shape mismatch surface deep inside torch.

Units: a field is (B, d, *spatial) in normalised coordinates (each axis spans [-1, 1] with
``align_corners=True``; see :mod:`models.warp`); along an axis of length N one normalised unit
is ``(N - 1) / 2`` pixels. :func:`to_pixel_units` and :func:`to_normalised_units` convert,
channel by channel.
"""

import torch

from utils.errors import ShapeError


def _shape(t):
    return "x".join(str(s) for s in t.shape)


def check_spatial(tensor, name, dim=None, channels=None):
    """Check that ``tensor`` is (batch, channels, *spatial) with 2 or 3 spatial axes.

    Returns the number of spatial dimensions.
    """
    if not torch.is_tensor(tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    n_spatial = tensor.dim() - 2
    if n_spatial not in (2, 3) or (dim is not None and n_spatial != dim):
        want = f"{dim}D" if dim is not None else "2D or 3D"
        raise ShapeError(
            f"{name} has shape {_shape(tensor)}; expected (batch, channels, *spatial) with {want} spatial axes"
        )
    if channels is not None and tensor.shape[1] != channels:
        raise ShapeError(f"{name} has {tensor.shape[1]} channels (shape {_shape(tensor)}); expected {channels}")
    return n_spatial


def check_same_spatial(a, name_a, b, name_b):
    """Check that two (batch, channels, *spatial) tensors share batch size and spatial shape."""
    if a.shape[2:] != b.shape[2:] or a.shape[0] != b.shape[0]:
        raise ShapeError(
            f"{name_a} ({_shape(a)}) and {name_b} ({_shape(b)}) must have the same batch size and spatial shape"
        )


def check_image_pair(moving, fixed, dim=None):
    """Validate a registration input pair: both (B, 1, *spatial), same shape. Returns dim."""
    d = check_spatial(moving, "moving image", dim, channels=1)
    check_spatial(fixed, "fixed image", d, channels=1)
    check_same_spatial(moving, "moving image", fixed, "fixed image")
    return d


def check_field(flow, name="displacement field"):
    """Validate a displacement field (B, d, *spatial) with d equal to the number of spatial axes."""
    d = check_spatial(flow, name)
    if flow.shape[1] != d:
        raise ShapeError(
            f"{name} has {flow.shape[1]} channels but {d} spatial axes (shape {_shape(flow)}); "
            f"expected one channel per axis"
        )
    return d


def _axis_scale(shape, device, dtype):
    """(N_i - 1) / 2 per spatial axis, shaped to broadcast over (B, d, *spatial)."""
    scale = torch.tensor([(n - 1) / 2.0 for n in shape], device=device, dtype=dtype)
    return scale.view(1, len(shape), *([1] * len(shape)))


def to_pixel_units(flow):
    """Convert a normalised displacement field to pixel (voxel) units, channel by channel."""
    check_field(flow)
    return flow * _axis_scale(flow.shape[2:], flow.device, flow.dtype)


def to_normalised_units(flow_pixels):
    """Inverse of :func:`to_pixel_units`."""
    check_field(flow_pixels)
    return flow_pixels / _axis_scale(flow_pixels.shape[2:], flow_pixels.device, flow_pixels.dtype)
