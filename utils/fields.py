"""Displacement-field conventions shared by models, warping, losses and metrics.

Shape checks: each raises :class:`utils.errors.ShapeError` with a message that names the tensor
and its shape, instead of letting a shape mismatch surface deep inside torch.

Units: a field is (B, d, *spatial) in normalised coordinates (each axis spans [-1, 1] with
``align_corners=True``; see :mod:`models.warp`); along an axis of length N one normalised unit
is ``(N - 1) / 2`` pixels. :func:`to_pixel_units` and :func:`to_normalised_units` convert,
channel by channel.

Derivatives: :func:`central_difference` and :func:`jacobian_determinant` of the map
``x + u(x)`` in pixel units, used by the metrics (folding, SDlogJ) and the folding penalty.
"""

import torch

from utils.device import device_constant
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
    """(N_i - 1) / 2 per spatial axis, shaped to broadcast over (B, d, *spatial); never write into it.

    Kept per shape, device and dtype: made afresh on a GPU, it would be a copy from host memory
    that waits for the stream, in every loss and head call (and a CUDA graph cannot capture it).
    """
    return _kept_axis_scale(tuple(int(n) for n in shape), torch.device(device), dtype)


@device_constant(maxsize=32)
def _kept_axis_scale(shape, device, dtype):
    scale = torch.tensor([(n - 1) / 2.0 for n in shape], dtype=dtype).to(device)
    return scale.view(1, len(shape), *([1] * len(shape)))


def to_pixel_units(flow):
    """Convert a normalised displacement field to pixel (voxel) units, channel by channel."""
    check_field(flow)
    return flow * _axis_scale(flow.shape[2:], flow.device, flow.dtype)


def to_normalised_units(flow_pixels):
    """Inverse of :func:`to_pixel_units`."""
    check_field(flow_pixels)
    return flow_pixels / _axis_scale(flow_pixels.shape[2:], flow_pixels.device, flow_pixels.dtype)


def central_difference(x, axis):
    """Derivative of (B, C, *spatial) ``x`` along spatial ``axis`` in pixel steps.

    Central differences inside, one-sided at the two borders (as ``torch.gradient``, which is
    several times slower on a CPU for 3D volumes). The axis needs at least 2 samples.
    """
    dim = 2 + axis
    n = x.shape[dim]
    if n < 2:
        raise ShapeError(f"a derivative along spatial axis {axis} needs at least 2 samples, got {n}")
    first = x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1)
    last = x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1)
    if x.requires_grad and torch.is_grad_enabled():
        # Differentiable path (a loss on the Jacobian): no out= writes.
        inner = [(x.narrow(dim, 2, n - 2) - x.narrow(dim, 0, n - 2)) * 0.5] if n > 2 else []
        return torch.cat([first, *inner, last], dim=dim)
    g = torch.empty_like(x)
    g.narrow(dim, 0, 1).copy_(first)
    g.narrow(dim, n - 1, 1).copy_(last)
    if n > 2:
        torch.sub(x.narrow(dim, 2, n - 2), x.narrow(dim, 0, n - 2), out=g.narrow(dim, 1, n - 2))
        g.narrow(dim, 1, n - 2).mul_(0.5)
    return g


def jacobian_determinant(flow):
    """Jacobian determinant of ``x + u(x)`` in pixel units.

    Parameters
    ----------
    flow : torch.Tensor
        (B, d, *spatial) normalised displacement.

    Returns
    -------
    torch.Tensor
        (B, *spatial) determinant; 1 everywhere for the identity.
    """
    d = check_field(flow)
    u = to_pixel_units(flow)
    # j[c][a] = delta_ca + d u_c / d x_a, each (B, *spatial)
    grads = [central_difference(u, axis) for axis in range(d)]
    j = [[grads[a][:, c] + (1.0 if a == c else 0.0) for a in range(d)] for c in range(d)]
    if d == 2:
        return j[0][0] * j[1][1] - j[0][1] * j[1][0]
    return (
        j[0][0] * (j[1][1] * j[2][2] - j[1][2] * j[2][1])
        - j[0][1] * (j[1][0] * j[2][2] - j[1][2] * j[2][0])
        + j[0][2] * (j[1][0] * j[2][1] - j[1][1] * j[2][0])
    )
