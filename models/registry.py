"""Model names, size presets and ``build_model``: how a config's ``model_name`` and
``model_config`` become a network.

A ``model_config`` names a ``preset`` and may override any constructor argument, e.g.
``{"preset": "small", "n_modes": [20, 24]}``; without a preset every required argument must be
given. The resolved arguments are kept on the model (``model.model_config``) so that a
checkpoint can carry the exact configuration that rebuilds it.
"""

import inspect
from dataclasses import dataclass, field


from utils.errors import ConfigError

from .fnoreg import FNOReg
from .fouriernet import FourierNet
from .transmorph import TransMorph
from .voxelmorph import VoxelMorph

# Published sizes (DESIGN.md A.2); spectral weights Tucker-factorised with rank 0.42.
FNOREG_PRESETS = {
    "small": dict(dim=2, hidden_channels=16, projection_channels=32, n_layers=6, n_modes=[40, 48]),
    "medium": dict(dim=2, hidden_channels=32, projection_channels=64, n_layers=12, n_modes=[40, 48]),
    "large": dict(dim=2, hidden_channels=32, projection_channels=64, n_layers=12, n_modes=[60, 72]),
    "3d": dict(dim=3, hidden_channels=12, projection_channels=24, n_layers=15, n_modes=[40, 48, 56]),
}

# VoxelMorph-1/-2/-Huge as TransMorph's baselines define them (the code the FNOReg authors trained
# their VoxelMorph rows with; 3D counts 274,387 / 301,411 / 63,252,939 as published), and the
# FNOReg paper's VoxelMorph-Large (residual U-Net, 32 starting channels, 4 encoder blocks).
VOXELMORPH_PRESETS = {
    "vxm1": dict(architecture="strided", enc_features=[8, 32, 32, 32], dec_features=[32, 32, 32, 32, 32, 8, 8]),
    "vxm2": dict(architecture="strided", enc_features=[16, 32, 32, 32],
                 dec_features=[32, 32, 32, 32, 32, 16, 16]),
    "huge": dict(architecture="strided", enc_features=[14, 28, 144, 320],
                 dec_features=[1152, 1152, 320, 144, 28, 14, 14]),
    "large": dict(architecture="residual", start_channels=32, levels=4, res_blocks=2, latent_blocks=1),
}
# Fourier-Net with 16 and 32 starting channels; add "diffeomorphic": true for Fourier-Net-Diff.
FOURIERNET_PRESETS = {"c16": dict(start_channels=16), "c32": dict(start_channels=32)}
# TransMorph (46.77 M parameters in 3D) and TransMorph-Small of the TransMorph paper; "3stage" drops
# the deepest stage so that sides need only be multiples of 16 (half resolution: 80x96, 80x96x112).
TRANSMORPH_PRESETS = {
    "base": dict(embed_dim=96, depths=[2, 2, 4, 2], num_heads=[4, 4, 8, 8]),
    "small": dict(embed_dim=48, depths=[2, 2, 4, 2], num_heads=[4, 4, 4, 4]),
    "3stage": dict(embed_dim=96, depths=[2, 2, 4], num_heads=[4, 4, 8]),
}


@dataclass
class ModelSpec:
    """A registered model: its class, named presets, and arguments fixed by the name."""

    cls: type
    presets: dict
    fixed: dict = field(default_factory=dict)
    doc: str = ""


MODELS = {
    "fnoreg": ModelSpec(FNOReg, FNOREG_PRESETS, doc="FNOReg (Drozdov & Sorokin, ICPR 2024)"),
    # Plain FNO baseline (DESIGN.md A.9): same sizes, no FFC blocks, no residual after activation.
    "fno": ModelSpec(FNOReg, FNOREG_PRESETS, fixed=dict(ffc_blocks=False, residual=False), doc="plain FNO baseline"),
    # Baselines (DESIGN.md A.9); their presets carry no dim: the config's dim picks 2D or 3D.
    "voxelmorph": ModelSpec(VoxelMorph, VOXELMORPH_PRESETS, doc="VoxelMorph (Balakrishnan et al., 2019)"),
    "fouriernet": ModelSpec(FourierNet, FOURIERNET_PRESETS, doc="Fourier-Net (Jia et al., AAAI 2023)"),
    "transmorph": ModelSpec(TransMorph, TRANSMORPH_PRESETS, doc="TransMorph (Chen et al., MedIA 2022)"),
}


def register_model(name, cls, presets=None, fixed=None, doc=""):
    """Make ``cls`` buildable by name (baselines call this from their own module)."""
    MODELS[name] = ModelSpec(cls, presets or {}, fixed or {}, doc)


def _constructor_args(cls):
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    return [p.name for p in params], required


def stored_model_config(model_name, model_config):
    """A ``model_config`` an experiment stored (checkpoint, weights, ``config.json``), for today's code.

    VoxelMorph-1/-2/-Huge became ``architecture: "strided"`` on 2026-11-30; a stored VoxelMorph
    config without ``architecture`` was resolved before then (or names no preset), when the
    U-Net was ``"unet"``, which is what its weights fit. New experiments store the key.
    """
    if model_name == "voxelmorph" and isinstance(model_config, dict) and "architecture" not in model_config:
        return {**model_config, "architecture": "unet"}
    return model_config


def resolve_model_config(model_name, model_config, dim):
    """Validate ``model_config`` for ``model_name`` and return the full constructor arguments.

    Parameters
    ----------
    model_name : str
        A registered name, e.g. "fnoreg".
    model_config : dict
        Optional "preset" plus constructor-argument overrides.
    dim : int
        Spatial dimension the caller needs (2 or 3).

    Returns
    -------
    dict
        JSON-serialisable keyword arguments (including ``dim`` and ``preset`` when given).

    Raises
    ------
    ConfigError
        Unknown model name, unknown preset, preset of the wrong dimension, unknown or missing key.
    """
    if model_name not in MODELS:
        raise ConfigError(f"unknown model_name {model_name!r}; available: {', '.join(sorted(MODELS))}")
    spec = MODELS[model_name]
    if not isinstance(model_config, dict):
        raise ConfigError(f"model_config must be a JSON object, got {type(model_config).__name__}")
    cfg = dict(model_config)
    preset_name = cfg.pop("preset", None)
    args = {}
    if preset_name is not None:
        if preset_name not in spec.presets:
            raise ConfigError(
                f"unknown preset {preset_name!r} for model {model_name!r}; available: {', '.join(spec.presets)}"
            )
        args.update(spec.presets[preset_name])
        if args.get("dim", dim) != dim:
            raise ConfigError(f"preset {preset_name!r} of {model_name!r} is {args['dim']}D but a {dim}D model is needed")
    names, required = _constructor_args(spec.cls)
    if cfg.get("dim", dim) != dim:
        raise ConfigError(f"model_config says dim {cfg['dim']!r} but a {dim}D model is needed")
    for key in cfg:
        if key in spec.fixed:
            raise ConfigError(f"model_config key {key!r} is fixed by model_name {model_name!r}")
        if key not in names:
            valid = ", ".join(["preset"] + [n for n in names if n != "dim" and n not in spec.fixed])
            raise ConfigError(f"unknown model_config key {key!r} for {model_name!r}; valid keys: {valid}")
    args.update(cfg)
    args["dim"] = dim
    missing = [n for n in required if n not in args and n not in spec.fixed]
    if missing:
        raise ConfigError(f"model_config for {model_name!r} is missing {', '.join(missing)}; give them or a preset")
    resolved = {"preset": preset_name} if preset_name is not None else {}
    resolved.update(args)
    return resolved


def build_model(model_name, model_config, dim):
    """Build a registered model from its name and config.

    Returns
    -------
    torch.nn.Module
        The model, with ``model_name`` and ``model_config`` (resolved) attributes.
    """
    resolved = resolve_model_config(model_name, model_config, dim)
    spec = MODELS[model_name]
    kwargs = {k: v for k, v in resolved.items() if k != "preset"}
    model = spec.cls(**kwargs, **spec.fixed)
    model.model_name = model_name
    model.model_config = resolved
    return model


def count_parameters(model):
    """Number of trainable real-valued scalars; a complex weight counts as two.

    This is the convention behind the published counts (about 1.27 M for FNOReg small).
    """
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters() if p.requires_grad)


def list_presets():
    """{model_name: {preset: dim}} for every registered model."""
    return {name: {p: cfg.get("dim") for p, cfg in spec.presets.items()} for name, spec in MODELS.items()}


__all__ = ["build_model", "count_parameters", "register_model", "resolve_model_config", "list_presets", "stored_model_config",
           "MODELS"]
