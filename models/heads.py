"""What the baselines share at their output: head initialisation, field units, integration.

Every model returns a displacement in normalised coordinates (DESIGN.md A.4). A convolutional
baseline can instead let its last layer predict pixels, as VoxelMorph and TransMorph do in their
public code; :class:`FlowOutput` then divides channel i by ``(N_i - 1) / 2`` of the image it was
given. The two choices differ only when a model runs at a resolution it was not trained at:
with ``"pixels"`` the same activations mean the same number of *pixels* of the image at hand
(so half as far, anatomically, at twice the resolution), with ``"normalised"`` they mean the same
fraction of the field of view. Optionally the field is a stationary velocity integrated by
:class:`models.integrate.ScalingSquaring` (after the unit conversion, so the layer always sees
normalised fields); evaluation and ``register.py`` only ever see the final displacement.
"""

from torch import nn

from utils.errors import ConfigError
from utils.fields import to_normalised_units
from utils.precision import in_float32

from .integrate import ScalingSquaring

FLOW_UNITS = ("pixels", "normalised")
HEAD_INITS = ("normal", "zeros", "default")


def check_choice(value, choices, key):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
    return value


def positive_int(value, key):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def int_list(values, key, min_len=1):
    if not isinstance(values, (list, tuple)) or len(values) < min_len:
        raise ConfigError(f"{key} must be a list of at least {min_len} positive integers, got {values!r}")
    return [positive_int(v, f"every {key} entry") for v in values]


def init_head(layer, head_init):
    """``"normal"``: weights N(0, 1e-5^2), zero bias (VoxelMorph's and TransMorph's choice: the
    untrained model is the identity to within about 1e-4 pixels); ``"zeros"``: exactly zero
    output; ``"default"``: PyTorch's initialisation."""
    check_choice(head_init, HEAD_INITS, "head_init")
    if head_init == "normal":
        nn.init.normal_(layer.weight, std=1e-5)
    elif head_init == "zeros":
        nn.init.zeros_(layer.weight)
    if head_init != "default" and layer.bias is not None:
        nn.init.zeros_(layer.bias)


class FlowOutput(nn.Module):
    """Turn a head's output into the normalised displacement every model returns.

    Parameters
    ----------
    flow_units : {"pixels", "normalised"}
        What the head predicts (see the module docstring).
    integration_steps : int
        0: the head predicts a displacement. k > 0: it predicts a stationary velocity, integrated
        by scaling and squaring with k steps (a diffeomorphic variant).
    padding : {"zeros", "border"}
        What the integration reads outside the image (:class:`models.integrate.ScalingSquaring`):
        as the model's public code does.
    """

    def __init__(self, flow_units="normalised", integration_steps=0, padding="zeros"):
        super().__init__()
        self.flow_units = check_choice(flow_units, FLOW_UNITS, "flow_units")
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ConfigError(f"integration_steps must be a non-negative integer, got {integration_steps!r}")
        self.integrate = ScalingSquaring(integration_steps, padding=padding) if integration_steps else None

    @in_float32  # the field and its integration in float32 under mixed precision
    def forward(self, flow):
        if self.flow_units == "pixels":
            flow = to_normalised_units(flow)
        return self.integrate(flow) if self.integrate is not None else flow


__all__ = ["FLOW_UNITS", "HEAD_INITS", "FlowOutput", "check_choice", "init_head", "int_list", "positive_int"]
