"""Smoothness penalty of a displacement field, in pixel units (DESIGN.md A.5)."""

import torch

from utils.fields import to_pixel_units


def smoothness(flow):
    """Mean squared forward difference of the displacement in pixel units, averaged over axes.

    Each channel is first converted to pixels with its own axis length, ``(N_c - 1) / 2``
    (the released code used ``N / 2`` of the derivative axis). A forward difference of pixel
    displacement over one pixel step approximates the dimensionless gradient ``du/dx``, so
    the same smooth field sampled at two resolutions gives (almost) the same penalty.

    Parameters
    ----------
    flow : torch.Tensor
        (B, d, *spatial) normalised displacement.

    Returns
    -------
    torch.Tensor
        Scalar penalty.
    """
    u = to_pixel_units(flow)
    d = u.shape[1]
    terms = [torch.diff(u, dim=2 + axis).pow(2).mean() for axis in range(d)]
    return torch.stack(terms).mean()
