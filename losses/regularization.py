"""Regularisers of a displacement field: smoothness (DESIGN.md A.5) and a folding penalty."""

import torch

from utils.fields import jacobian_determinant, to_pixel_units


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


def folding_penalty(flow, margin=0.0):
    """Mean of ``relu(margin - J)``, J the Jacobian determinant of ``x + u(x)`` in pixel units.

    Zero for any field that does not fold (with ``margin=0``); it grows linearly with how far
    each folded pixel's determinant is below zero, so it pushes back exactly where the map stops
    being invertible and leaves the rest of the field to the similarity and smoothness terms.
    The determinant is dimensionless, so the penalty means the same at every resolution.

    Parameters
    ----------
    flow : torch.Tensor
        (B, d, *spatial) normalised displacement.
    margin : float
        Determinants below this are penalised (0: only folds).

    Returns
    -------
    torch.Tensor
        Scalar penalty.
    """
    return torch.relu(margin - jacobian_determinant(flow)).mean()
