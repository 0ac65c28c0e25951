"""Resolution handling for ``--size``: target shapes and batched resizing on any device.

Geometry convention: corners are aligned (``align_corners=True``), the convention of the warp
(DESIGN A.4), so a normalised coordinate names the same anatomical point at every resolution
and a displacement predicted at 80x96 can be applied to the 160x192 image unchanged. The
released code resized with torchvision's ``Resize`` (half-pixel centres); the two grids differ by
under one pixel at the border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.errors import ConfigError, ShapeError
from utils.smoothing import gaussian_smooth


def shape_for_size(size: int, full_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape whose smallest side is ``size``, keeping the aspect ratio of ``full_shape``.

    Parameters
    ----------
    size : int
        Length of the smallest side (the ``--size`` flag), at least 2.
    full_shape : tuple of int
        Spatial shape at full resolution, e.g. ``(160, 192)`` or ``(160, 192, 224)``.

    Returns
    -------
    tuple of int
        E.g. ``80`` with ``(160, 192)`` -> ``(80, 96)``; with ``(160, 192, 224)`` ->
        ``(80, 96, 112)``. Other sides are rounded to the nearest integer.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ConfigError(f"--size must be an integer >= 2 (the smallest image side), got {size!r}")
    full_shape = tuple(int(s) for s in full_shape)
    smallest = min(full_shape)
    return tuple(size if s == smallest else max(1, round(s * size / smallest)) for s in full_shape)


def _check_batch(x: torch.Tensor, shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if x.dim() != len(shape) + 2 or len(shape) not in (2, 3):
        raise ShapeError(f"{what} must be (N, C, *spatial) with 2 or 3 spatial axes matching the "
                         f"target shape {shape}; got a tensor of shape {tuple(x.shape)}")
    return shape


def gaussian_blur(x: torch.Tensor, sigma: float | tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian blur over the spatial axes of an ``(N, C, *spatial)`` float tensor.

    Parameters
    ----------
    x : torch.Tensor
        Batch of images, 2 or 3 spatial axes, on any device.
    sigma : float or tuple of float
        Standard deviation in pixels, one per spatial axis or shared; 0 leaves an axis alone.

    Returns
    -------
    torch.Tensor
        Blurred tensor of the same shape; borders are zero-padded (brain images sit on a zero
        background, so the border stays dark as it should).
    """
    return gaussian_smooth(x, sigma, padding="zeros")


def resize_images(x: torch.Tensor, shape: tuple[int, ...], antialias: bool = False,
                  batch_size: int | None = None) -> torch.Tensor:
    """Resize a batch of images bilinearly (2D) or trilinearly (3D) on the tensor's device.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` float images.
    shape : tuple of int
        Target spatial shape.
    antialias : bool
        Low-pass each axis before downsampling with a Gaussian of sigma ``(factor - 1) / 2``
        pixels (the usual anti-aliasing rule; one code path for 2D and 3D). Off by default, as in
        the published runs.
    batch_size : int, optional
        Resize this many images at a time to bound peak memory; all at once when None.

    Returns
    -------
    torch.Tensor
        ``(N, C, *shape)`` tensor; ``x`` itself when it already has that shape.
    """
    shape = _check_batch(x, shape, "images")
    if tuple(x.shape[2:]) == shape:
        return x
    if batch_size is not None and x.shape[0] > batch_size:
        return torch.cat([resize_images(x[i:i + batch_size], shape, antialias)
                          for i in range(0, x.shape[0], batch_size)])
    if antialias:
        factors = [old / new for old, new in zip(x.shape[2:], shape)]
        x = gaussian_blur(x, tuple(max(0.0, (f - 1) / 2) for f in factors))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(x, size=shape, mode=mode, align_corners=True)


def resize_labels(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize integer label maps by nearest neighbour, with corners aligned like the images.

    Parameters
    ----------
    x : torch.Tensor
        ``(N, C, *spatial)`` label maps of any dtype, on any device.
    shape : tuple of int
        Target spatial shape.

    Returns
    -------
    torch.Tensor
        ``(N, C, *shape)`` with the dtype of ``x`` (no float round trip); ``x`` itself when it
        already has that shape.
    """
    shape = _check_batch(x, shape, "labels")
    if tuple(x.shape[2:]) == shape:
        return x
    # Output index i takes input index round(i * (n_in - 1) / (n_out - 1)): the nearest sample
    # on the align_corners=True grid. A gather per axis keeps integer dtypes as they are.
    for axis, (n_in, n_out) in enumerate(zip(x.shape[2:], shape)):
        if n_in == n_out:
            continue
        pos = torch.linspace(0, n_in - 1, n_out, device=x.device, dtype=torch.float64)
        x = x.index_select(axis + 2, pos.round().long())
    return x
