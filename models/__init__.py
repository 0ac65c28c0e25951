"""Registration networks, the spatial transformer and the model registry."""

from .fnoreg import FNOReg, FourierLayer
from .registry import build_model, count_parameters, list_presets, register_model, resolve_model_config
from .warp import SpatialTransformer, identity_grid, to_normalised_units, to_pixel_units, warp

__all__ = [
    "FNOReg",
    "FourierLayer",
    "SpatialTransformer",
    "build_model",
    "count_parameters",
    "identity_grid",
    "list_presets",
    "register_model",
    "resolve_model_config",
    "to_normalised_units",
    "to_pixel_units",
    "warp",
]
