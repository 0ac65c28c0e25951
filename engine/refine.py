"""Per-pair refinement (instance optimisation): a few Adam steps on one pair's own objective.

The network gives a field in one forward pass; a classical method optimises each pair's field
for a long time. Refinement meets them half way (as the best Learn2Reg entries do): start from
the network's field at the evaluation resolution and take ``steps`` Adam steps on that pair's
similarity + ``reg_param`` x smoothness + ``jac_param`` x folding penalty, with the same loss
terms as training (:class:`losses.RegistrationLoss`). The field is optimised directly, in pixel
units, so one learning rate means the same step at every resolution.

The evaluation and ``register.py`` call :func:`refine_field` when ``--refine K`` is given (off by
default) and report Dice, folding and time with and without it.
"""

import dataclasses

import torch

from losses import RegistrationLoss
from models import warp
from models.foldrepair import repair_folds
from utils.fields import to_normalised_units, to_pixel_units

#: Folding weight used in refinement when the training objective had none (jac_param = 0):
#: refinement optimises one pair's field freely, and without it the similarity term alone
#: folds readily.
DEFAULT_REFINE_JAC_PARAM = 1.0
#: Adam step, in pixels.
DEFAULT_REFINE_LR = 0.1


def refine_loss(loss_fn=None):
    """The refinement objective: ``loss_fn`` without its label term, with a folding term.

    Parameters
    ----------
    loss_fn : losses.RegistrationLoss, optional
        The experiment's training objective (default: the published one).

    Returns
    -------
    losses.RegistrationLoss
        Same similarity and smoothness weight; ``seg_param`` 0 (test labels are never used);
        ``jac_param`` the training one, or :data:`DEFAULT_REFINE_JAC_PARAM` when that is 0.
    """
    loss_fn = loss_fn or RegistrationLoss()
    jac = loss_fn.jac_param if loss_fn.jac_param > 0 else DEFAULT_REFINE_JAC_PARAM
    return dataclasses.replace(loss_fn, seg_param=0.0, jac_param=jac)


def refine_field(moving, fixed, flow, steps, loss_fn=None, lr=DEFAULT_REFINE_LR, repair=False):
    """Refine a displacement for its own pair by ``steps`` Adam steps.

    Parameters
    ----------
    moving, fixed : torch.Tensor
        (B, 1, *spatial) images at the evaluation resolution.
    flow : torch.Tensor
        (B, d, *spatial) the network's normalised displacement for them.
    steps : int
        Number of Adam steps; 0 returns ``flow`` unchanged.
    loss_fn : losses.RegistrationLoss, optional
        Objective, as made by :func:`refine_loss`.
    lr : float
        Adam learning rate in pixels.
    repair : bool
        Repair the refined field where it still folds (:func:`models.foldrepair.repair_folds`, on
        the displacement), as a model with ``fold_repair`` does with its own field.

    Returns
    -------
    torch.Tensor
        (B, d, *spatial) refined normalised displacement, detached.
    """
    if steps <= 0:
        return flow
    loss_fn = loss_fn or refine_loss()
    moving, fixed = moving.detach(), fixed.detach()
    with torch.inference_mode(False), torch.enable_grad():
        # Tensors made under inference mode cannot be saved for backward: clone them out of it.
        moving, fixed = moving.clone(), fixed.clone()
        pixels = to_pixel_units(flow.detach().clone()).requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=lr)
        for _ in range(steps):
            field = to_normalised_units(pixels)
            # Each pair's loss is a mean over its own pixels: sum over the batch so that pairs do
            # not share one step size.
            total = sum(loss_fn(fixed[i : i + 1], warp(moving[i : i + 1], field[i : i + 1]), field[i : i + 1])[0]
                        for i in range(field.shape[0]))
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
    refined = to_normalised_units(pixels.detach())
    return repair_folds(refined)[0] if repair else refined
