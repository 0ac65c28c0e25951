"""Validation and defaults of the ``train_config`` section, and the LR schedule it describes.

Schema: :data:`TRAIN_SCHEMA` maps each key to ``(allowed types, default)``; unknown keys and
wrong types are errors naming the key. ``lr_schedule`` is null (constant learning rate, as
published) or ``{"type": "step" | "cosine" | "exponential", ...}`` with the keys of
:data:`SCHEDULE_SCHEMA`. This module is the only place that checks the section;
:func:`engine.config.resolve_config` calls it, and the trainer reads the result.
"""

import torch

from engine.multires import validate_multires
from utils.errors import ConfigError
from utils.precision import check_mixed_precision
from utils.schema import validate_section

# key: (allowed types, default). ``None`` in the types admits JSON null.
TRAIN_SCHEMA = {
    "lr": ((int, float), 1e-4),
    "batch_size": (int, 8),
    "epochs": (int, 80),
    "steps_per_epoch": ((int, None), None),  # null: one pass over all training pairs
    "reg_param": ((int, float), 0.01),
    "seg_param": ((int, float), 0.0),
    "jac_param": ((int, float), 0.0),  # folding penalty (losses.regularization.folding_penalty)
    "similarity": (str, "mse"),
    "ncc_window": (int, 9),
    "ckpt_freq": (int, 10),
    "val_freq": (int, 1),
    "image_log_freq": (int, 5),
    "seed": (int, 0),
    "size": ((int, None), None),  # smallest side of the training shape; null: the data's own
    "lr_schedule": ((dict, None), None),
    "grad_clip": ((int, float, None), None),
    "val_batch_size": ((int, None), None),  # null: batch_size
    "multires": ((dict, None), None),  # {"min_size": a, "max_size": b}: engine.multires
    "mixed_precision": ((bool, str, None), False),  # "bfloat16": utils.precision
}
SCHEDULE_SCHEMA = {
    "step": {"step_size": (int, None), "gamma": ((int, float), 0.1)},
    "cosine": {"min_lr": ((int, float), 0.0)},
    "exponential": {"gamma": ((int, float), None)},
}


def validate_train_config(given):
    """Check a ``train_config`` dict and return a resolved copy with every default filled.

    Parameters
    ----------
    given : dict
        The ``train_config`` section of a run config ({} gives the published 2D defaults).

    Returns
    -------
    dict
        Every key of :data:`TRAIN_SCHEMA`; ``lr_schedule`` with its own defaults filled in.

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong type or out of range; the message names the key.
    """
    cfg = validate_section(given, TRAIN_SCHEMA, "train_config")
    for key in ("batch_size", "epochs", "ckpt_freq", "val_freq", "image_log_freq", "ncc_window"):
        if cfg[key] < 1:
            raise ConfigError(f"train_config.{key} must be at least 1, got {cfg[key]}")
    for key in ("steps_per_epoch", "size", "val_batch_size"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"train_config.{key} must be at least 1 or null, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"train_config.lr must be positive, got {cfg['lr']}")
    for key in ("reg_param", "seg_param", "jac_param"):
        if cfg[key] < 0:
            raise ConfigError(f"train_config.{key} must be non-negative, got {cfg[key]}")
    if cfg["similarity"] not in ("mse", "ncc"):
        raise ConfigError(f"train_config.similarity must be 'mse' or 'ncc', got {cfg['similarity']!r}")
    if cfg["ncc_window"] % 2 == 0:
        raise ConfigError(f"train_config.ncc_window must be odd (a window centred on its pixel), got {cfg['ncc_window']}")
    # A negative max norm would flip every gradient: training would climb the loss without a word.
    if cfg["grad_clip"] is not None and cfg["grad_clip"] <= 0:
        raise ConfigError(f"train_config.grad_clip must be positive or null (no clipping), got {cfg['grad_clip']}")
    cfg["multires"] = validate_multires(cfg["multires"])
    check_mixed_precision(cfg["mixed_precision"])
    if cfg["multires"] is not None and cfg["size"] is not None and cfg["size"] != cfg["multires"]["max_size"]:
        raise ConfigError(f"train_config.size ({cfg['size']}) and multires.max_size ({cfg['multires']['max_size']}) "
                          "disagree; with multires the split is held at max_size: set size to null or to max_size")
    schedule = cfg["lr_schedule"]
    if schedule is not None:
        kind = schedule.get("type")
        if kind not in SCHEDULE_SCHEMA:
            raise ConfigError(
                f"train_config.lr_schedule.type must be one of {', '.join(SCHEDULE_SCHEMA)} (or lr_schedule null), "
                f"got {kind!r}"
            )
        rest = {k: v for k, v in schedule.items() if k != "type"}
        cfg["lr_schedule"] = {"type": kind, **validate_section(rest, SCHEDULE_SCHEMA[kind], "train_config.lr_schedule")}
        _check_schedule(cfg["lr_schedule"], cfg["lr"])
    return cfg


def _check_schedule(spec, lr):
    """Values a schedule needs to keep the learning rate positive (a negative one ascends the loss)."""
    where = f"train_config.lr_schedule ({spec['type']})"
    if "gamma" in spec and not spec["gamma"] > 0:
        raise ConfigError(f"{where}: gamma must be positive, got {spec['gamma']}")
    if "step_size" in spec and spec["step_size"] < 1:
        raise ConfigError(f"{where}: step_size must be at least 1 epoch, got {spec['step_size']}")
    if "min_lr" in spec and not 0 <= spec["min_lr"] <= lr:
        raise ConfigError(f"{where}: min_lr must lie in [0, lr = {lr}], got {spec['min_lr']}")


def build_optimizer(parameters, lr):
    """Adam over ``parameters`` at learning rate ``lr``: the training optimizer of every model.

    The multi-tensor (``foreach``) implementation: the same update as the default one-tensor
    loop, with one call per operation over all parameters instead of one per parameter; on the
    CPU, where PyTorch defaults to the loop, it took FNOReg small's step from about 6 to 4 ms.
    """
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


def build_scheduler(optimizer, cfg, epochs):
    """The ``torch.optim.lr_scheduler`` that ``cfg["lr_schedule"]`` describes, or None (constant LR)."""
    spec = cfg["lr_schedule"]
    if spec is None:
        return None
    kind = spec["type"]
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, spec["step_size"], spec["gamma"])
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=spec["min_lr"])
    return torch.optim.lr_scheduler.ExponentialLR(optimizer, spec["gamma"])
