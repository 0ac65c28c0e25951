"""The weighted training objective: similarity + lambda * smoothness + gamma * soft Dice + folding."""

from dataclasses import dataclass

from utils.errors import ConfigError

from .dice import soft_dice_loss
from .regularization import folding_penalty, smoothness
from .similarity import SIMILARITIES, local_ncc


@dataclass
class RegistrationLoss:
    """``sim(F, M o phi) + reg_param * smooth(u) + seg_param * (1 - softDice) + jac_param * fold(u)``.

    Parameters
    ----------
    similarity : {"mse", "ncc"}
        Image term ("mse" as published for OASIS).
    reg_param : float
        lambda, weight of the pixel-unit smoothness penalty (0.01 as published).
    seg_param : float
        gamma, weight of the soft Dice term (0 in 2D, 0.01 in 3D as published); needs labels.
    ncc_window : int
        Window of the local NCC, in pixels.
    jac_param : float
        Weight of :func:`losses.regularization.folding_penalty` (mean of ``relu(-J)``); 0, the
        published objective, leaves it out.
    """

    similarity: str = "mse"
    reg_param: float = 0.01
    seg_param: float = 0.0
    ncc_window: int = 9
    jac_param: float = 0.0

    def __post_init__(self):
        if self.similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {sorted(SIMILARITIES)}, got {self.similarity!r}")
        for key in ("reg_param", "seg_param", "jac_param"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{key} must be a non-negative number, got {value!r}")

    @classmethod
    def from_config(cls, train_config):
        """The objective a ``train_config`` section describes (keys absent from it keep their defaults)."""
        return cls(**{k: train_config[k] for k in ("similarity", "reg_param", "seg_param", "ncc_window", "jac_param")
                      if k in train_config})

    @property
    def uses_labels(self):
        return self.seg_param > 0

    def __call__(self, fixed, warped, flow, fixed_onehot=None, warped_onehot=None):
        """Return ``(total, terms)`` where ``terms`` maps each term name to its unweighted value."""
        if self.similarity == "ncc":
            sim = local_ncc(fixed, warped, self.ncc_window)
        else:
            sim = SIMILARITIES[self.similarity](fixed, warped)
        terms = {"similarity": sim, "smoothness": smoothness(flow)}
        if self.jac_param > 0:
            terms["folding_penalty"] = folding_penalty(flow)
        if self.uses_labels:
            if fixed_onehot is None or warped_onehot is None:
                raise ConfigError("seg_param > 0 needs label maps for every training subject; set seg_param to 0")
            terms["dice_loss"] = soft_dice_loss(fixed_onehot, warped_onehot)
        return self.combine(terms), terms

    def combine(self, terms):
        """The weighted total of unweighted ``terms`` (tensors or numbers); absent terms count 0.

        Also what a validation reports from each term averaged over the pairs it applies to
        (the Dice term over the pairs with label maps only).
        """
        weights = {"smoothness": self.reg_param, "folding_penalty": self.jac_param, "dice_loss": self.seg_param}
        total = terms["similarity"]
        for name, weight in weights.items():
            if name in terms and weight > 0:
                total = total + weight * terms[name]
        return total
