"""Experiment configs: load JSON, validate every section, fill defaults, resolve.

A config file has these top-level keys (unknown keys are errors that name the key)::

    {
      "description": "free text shown in metadata.json",
      "dim": 2,                       optional; must match the script (train_2d.py / train_3d.py)
      "model_name": "fnoreg",
      "model_config": {"preset": "small", ...},     see models.registry
      "train_config": {...},                        see TRAIN_DEFAULTS below
      "data_config": {...}                          see data.config
    }

The resolved config (every default filled in) is what is stored as ``config.json`` in an
experiment folder, and what a restart reads back.
"""

from pathlib import Path

from data.config import validate_data_config
from models.registry import resolve_model_config
from utils.errors import ConfigError
from utils.schema import check_value, validate_section
from utils.fileio import read_json

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

# key: (allowed types, default). ``None`` in the types admits JSON null.
TRAIN_SCHEMA = {
    "lr": ((int, float), 1e-4),
    "batch_size": (int, 8),
    "epochs": (int, 80),
    "steps_per_epoch": ((int, None), None),  # null: one pass over all training pairs
    "reg_param": ((int, float), 0.01),
    "seg_param": ((int, float), 0.0),
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
}
SCHEDULE_SCHEMA = {
    "step": {"step_size": (int, None), "gamma": ((int, float), 0.1)},
    "cosine": {"min_lr": ((int, float), 0.0)},
    "exponential": {"gamma": ((int, float), None)},
}
TOP_LEVEL = ("description", "dim", "model_name", "model_config", "train_config", "data_config")


def _validate_train(given):
    cfg = validate_section(given, TRAIN_SCHEMA, "train_config")
    for key in ("batch_size", "epochs", "ckpt_freq", "val_freq", "image_log_freq", "ncc_window"):
        if cfg[key] < 1:
            raise ConfigError(f"train_config.{key} must be at least 1, got {cfg[key]}")
    for key in ("steps_per_epoch", "size", "val_batch_size"):
        if cfg[key] is not None and cfg[key] < 1:
            raise ConfigError(f"train_config.{key} must be at least 1 or null, got {cfg[key]}")
    if cfg["lr"] <= 0:
        raise ConfigError(f"train_config.lr must be positive, got {cfg['lr']}")
    for key in ("reg_param", "seg_param"):
        if cfg[key] < 0:
            raise ConfigError(f"train_config.{key} must be non-negative, got {cfg[key]}")
    if cfg["similarity"] not in ("mse", "ncc"):
        raise ConfigError(f"train_config.similarity must be 'mse' or 'ncc', got {cfg['similarity']!r}")
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
    return cfg


def resolve_config(raw, dim, source="config"):
    """Validate a parsed config for a ``dim``-D run and return it with every default filled in.

    Parameters
    ----------
    raw : dict
        Parsed JSON.
    dim : int
        2 or 3, fixed by the script.
    source : str
        Name used in error messages (the file path).

    Raises
    ------
    ConfigError
        Naming the first offending key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must hold a JSON object at the top level")
    unknown = [k for k in raw if k not in TOP_LEVEL]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in {source}; valid top-level keys: {', '.join(TOP_LEVEL)}")
    if raw.get("dim", dim) != dim:
        raise ConfigError(f"{source} is for {raw['dim']}D data but this is the {dim}D script; use train_{raw['dim']}d.py")
    if "model_name" not in raw:
        raise ConfigError(f"{source} has no model_name (e.g. \"fnoreg\")")
    check_value(raw["model_name"], str, "model_name")
    description = raw.get("description", "")
    check_value(description, str, "description")
    model_config = resolve_model_config(raw["model_name"], raw.get("model_config", {}), dim)
    return {
        "description": description,
        "dim": dim,
        "model_name": raw["model_name"],
        "model_config": model_config,
        "train_config": _validate_train(raw.get("train_config", {})),
        "data_config": validate_data_config(raw.get("data_config", {}), dim),
    }


def find_config_file(name):
    """Resolve ``--config_file``: an existing path, or a file name inside ``configs/``."""
    path = Path(name)
    candidates = [path, CONFIG_DIR / path, CONFIG_DIR / f"{name}.json"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.json"))) or "none"
    raise ConfigError(f"config file {name!r} not found (looked in . and configs/; available in configs/: {available})")


def load_config(name_or_path, dim):
    """Find, parse and resolve a config for a ``dim``-D run. Returns (resolved dict, path)."""
    path = find_config_file(name_or_path)
    return resolve_config(read_json(path), dim, source=str(path)), path
