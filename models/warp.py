"""Spatial transformer (DESIGN.md A.4): pull-warp an image by a displacement field.

Conventions, shared with every model: a displacement field has shape (B, d, *spatial); channel i
is the displacement along spatial axis i in normalised coordinates, where each axis spans
[-1, 1] with ``align_corners=True`` (the first and last pixel centres sit at -1 and +1). A pixel
displacement along an axis of length N is therefore ``u * (N - 1) / 2``. The warped image is
``M(x + u(x))``, sampled with zeros outside the image. The identity grid is built from the
field's own shape (2D-sized grids are kept for reuse, keyed by shape, device and dtype), so no
resolution is ever baked in. The unit conversions
(:func:`to_pixel_units`, :func:`to_normalised_units`) live in :mod:`utils.fields`, next to the shape
checks, so that losses and metrics can use them without importing the models; they are
re-exported here and from :mod:`models`.

A zero field reproduces the image up to the rounding of ``grid_sample``'s coordinate
arithmetic: exactly for label maps (nearest), to about 1e-5 in float32 and 1e-12 in float64.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ShapeError
from utils.fields import check_field, check_spatial, to_normalised_units, to_pixel_units
from utils.precision import in_float32

# The unit conversions are re-exported: a warp's users need them next to it.
__all__ = ["identity_grid", "sampling_grid", "warp", "SpatialTransformer", "to_normalised_units", "to_pixel_units"]

_MODES = {"linear": "bilinear", "bilinear": "bilinear", "trilinear": "bilinear", "nearest": "nearest"}


def identity_grid(shape, device=None, dtype=torch.float32):
    """Normalised identity coordinates, shape (d, *shape), channel i varying along axis i."""
    axes = [torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)


# Grids up to this many numbers are kept: rebuilding one is 8 small operations, which on a GPU cost
# more host time than the sampling itself at 2D sizes; a 3D grid (100 MB at 160x192x224) is not.
_KEEP_GRID_NUMEL = 2**20
# Below this many output pixels a batch-1 CPU warp is not split (the split's own cost dominates).
_SPLIT_MIN_PIXELS = 4096


@functools.lru_cache(maxsize=8)
def _kept_sampling_grid(shape, device, dtype):
    with torch.inference_mode(False), torch.no_grad():  # usable inside and outside inference mode
        return _sampling_grid(shape, device, dtype)


def _sampling_grid(shape, device, dtype):
    """The identity in ``grid_sample``'s layout: (1, *shape, d), the last axis's coordinate first."""
    return identity_grid(shape, device, dtype).movedim(0, -1).flip(-1).unsqueeze(0)


def sampling_grid(shape, device=None, dtype=torch.float32):
    """:func:`identity_grid` in ``grid_sample``'s layout, (1, *shape, d); small ones are reused.

    The returned tensor may be shared between calls: never write into it.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) * math.prod(shape) <= _KEEP_GRID_NUMEL:
        return _kept_sampling_grid(shape, torch.device(device) if device is not None else torch.device("cpu"), dtype)
    return _sampling_grid(shape, device, dtype)


def _pieces(batch, grid):
    """Pieces to cut a batch-1 CPU warp into along its first axis, so grid_sample uses every thread.

    PyTorch's CPU grid_sample parallelises over the batch only; cut into k equal slabs that are
    sampled as a batch of k, a 160x192 warp takes half the time on 2 threads, with the same values.
    """
    if batch != 1 or grid.device.type != "cpu" or math.prod(grid.shape[1:-1]) < _SPLIT_MIN_PIXELS:
        return 1
    k = min(torch.get_num_threads(), grid.shape[1])
    while k > 1 and grid.shape[1] % k:
        k -= 1
    return k


@in_float32  # a field rounded to bfloat16 would move pixels by up to 0.4 % of its value
def warp(image, flow, mode="bilinear", padding="zeros"):
    """Pull-warp ``image`` by the displacement ``flow``: ``out(x) = image(x + flow(x))``.

    Parameters
    ----------
    image : torch.Tensor
        (B, C, *spatial) with 2 or 3 spatial axes; integer tensors (label maps) are warped with
        nearest-neighbour interpolation whatever ``mode`` says and returned in their own dtype.
    flow : torch.Tensor
        (B, d, *spatial) normalised displacement, same batch size and spatial shape as ``image``
        (a batch of 1 on either side is broadcast).
    mode : {"bilinear", "trilinear", "linear", "nearest"}
        Interpolation for floating-point images ("bilinear" means trilinear in 3D).
    padding : {"zeros", "border"}
        What a sample outside the image reads: zero (an image on a dark background), or the
        nearest border value (a displacement field, which does not vanish at the border).

    Returns
    -------
    torch.Tensor
        The warped image, same shape and dtype as ``image``; zeros (or the border value) where the
        sample falls outside.
    """
    d = check_field(flow)
    check_spatial(image, "image", d)
    if image.shape[2:] != flow.shape[2:]:
        raise ShapeError(
            f"image spatial shape {tuple(image.shape[2:])} does not match the displacement field's "
            f"{tuple(flow.shape[2:])}; resample one of them first"
        )
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {sorted(_MODES)}, got {mode!r}")
    if padding not in ("zeros", "border"):
        raise ValueError(f"padding must be 'zeros' or 'border', got {padding!r}")
    batch = max(image.shape[0], flow.shape[0])
    if image.shape[0] not in (1, batch) or flow.shape[0] not in (1, batch):
        raise ShapeError(f"image batch {image.shape[0]} and field batch {flow.shape[0]} do not match")

    integer = not (image.is_floating_point() or image.is_complex())
    sample_mode = "nearest" if integer else _MODES[mode]
    src = image.to(flow.dtype) if integer else image
    # grid_sample wants (B, *spatial, d) with the coordinate of the *last* axis first.
    grid = sampling_grid(flow.shape[2:], flow.device, flow.dtype) + flow.movedim(1, -1).flip(-1)
    grid = grid.expand(batch, *([-1] * (d + 1)))
    src = src.expand(batch, *src.shape[1:])
    k = _pieces(batch, grid)
    if k > 1:  # k slabs of the first axis as a batch of k; the image is shared (a stride-0 view)
        spatial = grid.shape[1:-1]
        grid = grid.reshape(k, spatial[0] // k, *spatial[1:], d)
        src = src.expand(k, *src.shape[1:])
    out = F.grid_sample(src, grid, mode=sample_mode, padding_mode=padding, align_corners=True)
    if k > 1:
        out = out.transpose(0, 1).reshape(1, out.shape[1], *flow.shape[2:])
    return out.round().to(image.dtype) if integer else out


class SpatialTransformer(nn.Module):
    """Module wrapper around :func:`warp` (no state: works at every resolution)."""

    def __init__(self, mode="bilinear"):
        super().__init__()
        self.mode = mode

    def forward(self, image, flow):
        return warp(image, flow, self.mode)
