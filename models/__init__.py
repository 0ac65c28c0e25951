"""Registration networks, the spatial transformer and the model registry."""

from .fnoreg import FNOReg, FourierLayer
from .fouriernet import FourierNet
from .integrate import ScalingSquaring
from .registry import build_model, count_parameters, list_presets, register_model, resolve_model_config
from .transmorph import TransMorph
from .voxelmorph import VoxelMorph
from .warp import SpatialTransformer, identity_grid, to_normalised_units, to_pixel_units, warp

__all__ = [
    "FNOReg",
    "FourierLayer",
    "FourierNet",
    "ScalingSquaring",
    "SpatialTransformer",
    "TransMorph",
    "VoxelMorph",
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
