"""Separable Gaussian smoothing over the spatial axes of a (N, C, *spatial) tensor (2D or 3D)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

PADDINGS = ("zeros", "replicate")


def gaussian_smooth(x: torch.Tensor, sigma: float | tuple[float, ...], padding: str = "zeros") -> torch.Tensor:
    """Separable Gaussian blur over the spatial axes of an ``(N, C, *spatial)`` float tensor.

    Parameters
    ----------
    x : torch.Tensor
        Batch of images or fields, 2 or 3 spatial axes, on any device.
    sigma : float or tuple of float
        Standard deviation in pixels, one per spatial axis or shared; 0 leaves an axis alone.
        The kernel is truncated at ``ceil(3 sigma)`` pixels.
    padding : {"zeros", "replicate"}
        Values beyond the border: zero (images on a zero background stay dark at the border) or
        the border value repeated (a displacement or velocity field, which does not vanish there).

    Returns
    -------
    torch.Tensor
        Blurred tensor of the same shape and dtype.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    n_spatial = x.dim() - 2
    sigmas = (sigma,) * n_spatial if isinstance(sigma, (int, float)) else tuple(sigma)
    for axis, s in enumerate(sigmas):
        if s <= 0:
            continue
        radius = max(1, math.ceil(3 * s))
        t = torch.arange(-radius, radius + 1, dtype=torch.float64)
        weights = torch.exp(-0.5 * (t / s) ** 2)
        weights = (weights / weights.sum()).tolist()
        # A weighted sum of shifted copies: cheaper than conv1d over millions of short lines.
        dim, length = axis + 2, x.shape[axis + 2]
        if padding == "zeros":
            pad = [0, 0] * (n_spatial - 1 - axis) + [radius, radius]
            padded = F.pad(x, pad)
        else:
            index = torch.arange(-radius, length + radius, device=x.device).clamp_(0, length - 1)
            padded = x.index_select(dim, index)
        out = padded.narrow(dim, 0, length) * weights[0]
        for k in range(1, len(weights)):
            out = out.add_(padded.narrow(dim, k, length), alpha=weights[k])
        x = out
    return x


__all__ = ["gaussian_smooth"]
