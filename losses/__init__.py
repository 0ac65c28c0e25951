"""Training losses: image similarity, smoothness, folding, soft Dice and their weighted sum."""

from .dice import one_hot, soft_dice_loss
from .registration import RegistrationLoss
from .regularization import folding_penalty, smoothness
from .similarity import local_ncc, mse

__all__ = ["RegistrationLoss", "folding_penalty", "local_ncc", "mse", "one_hot", "smoothness", "soft_dice_loss"]
