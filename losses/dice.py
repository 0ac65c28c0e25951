"""Soft Dice loss on one-hot label maps (the semi-supervised term, weight ``seg_param``)."""

import torch

from utils.device import device_constant
from utils.errors import ShapeError
from utils.fields import check_same_spatial, check_spatial


def one_hot(labels, label_ids):
    """One-hot encode an integer label map over an explicit label list.

    Parameters
    ----------
    labels : torch.Tensor
        (B, 1, *spatial) integer labels.
    label_ids : sequence of int
        Labels to encode, one channel each, in this order (background normally excluded).

    Returns
    -------
    torch.Tensor
        (B, len(label_ids), *spatial) float32 of zeros and ones.
    """
    check_spatial(labels, "label map", channels=1)
    if labels.is_floating_point():
        raise ShapeError(f"label map must hold integers, got dtype {labels.dtype}")
    ids = _kept_ids(tuple(int(i) for i in label_ids), labels.device, labels.dtype)
    shape = (1, len(ids)) + (1,) * (labels.dim() - 2)
    return (labels == ids.view(shape)).float()


@device_constant(maxsize=16)
def _kept_ids(label_ids, device, dtype):
    """The label list as a tensor on ``device``, kept (read in every training step with the Dice term)."""
    return torch.tensor(label_ids, dtype=dtype).to(device)


def soft_dice_loss(fixed_onehot, warped_onehot, eps=1e-5):
    """One minus the soft Dice, averaged over label channels and batch.

    Parameters
    ----------
    fixed_onehot : torch.Tensor
        (B, L, *spatial) one-hot labels of the fixed image.
    warped_onehot : torch.Tensor
        (B, L, *spatial) moving one-hot labels warped with linear interpolation (soft).
    eps : float
        Keeps labels absent from both maps at a loss of zero rather than undefined.
    """
    check_spatial(fixed_onehot, "fixed one-hot labels")
    check_same_spatial(fixed_onehot, "fixed one-hot labels", warped_onehot, "warped one-hot labels")
    if fixed_onehot.shape[1] != warped_onehot.shape[1]:
        raise ShapeError(
            f"fixed and warped one-hot labels have {fixed_onehot.shape[1]} and {warped_onehot.shape[1]} channels"
        )
    axes = tuple(range(2, fixed_onehot.dim()))
    inter = (fixed_onehot * warped_onehot).sum(axes)
    total = fixed_onehot.sum(axes) + warped_onehot.sum(axes)
    dice = (2 * inter + eps) / (total + eps)
    return 1.0 - dice.mean()
