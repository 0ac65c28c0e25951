"""Experiment configs: find and load the JSON file, and compose the validated sections.

A config file has these top-level keys (unknown keys are errors that name the key)::

    {
      "description": "free text shown in metadata.json",
      "dim": 2,                       optional; must match the script (train_2d.py / train_3d.py)
      "model_name": "fnoreg",
      "model_config": {"preset": "small", ...},     see models.registry
      "train_config": {...},                        see engine.train_config
      "data_config": {...}                          see data.config
    }

Each section is checked in one place, by the module that owns it: ``model_name`` and
``model_config`` by :func:`models.registry.resolve_model_config`, ``data_config`` by
:func:`data.config.validate_data_config`, ``train_config`` by
:func:`engine.train_config.validate_train_config`. :func:`resolve_config` checks the top level and
composes them. The resolved config (every default filled in) is what is stored as
``config.json`` in an experiment folder, and what a restart reads back.
"""

from pathlib import Path

from data.config import validate_data_config
from engine.train_config import validate_train_config
from models.registry import resolve_model_config, stored_model_config
from utils.errors import ConfigError
from utils.fileio import read_json
from utils.schema import check_value

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

TOP_LEVEL = ("description", "dim", "model_name", "model_config", "train_config", "data_config")


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
        "train_config": validate_train_config(raw.get("train_config", {})),
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


def stored_config(config):
    """A config an experiment stored, before resolving: its model config read as it was trained
    (:func:`models.registry.stored_model_config`)."""
    if not isinstance(config, dict) or not isinstance(config.get("model_config"), dict):
        return config  # resolve_config names what is wrong
    return {**config, "model_config": stored_model_config(config.get("model_name"), config["model_config"])}


def trained_config(stored, dim, source="weights"):
    """The resolved config that weights or a checkpoint were trained with, or None.

    Parameters
    ----------
    stored : dict or None
        The ``"config"`` a checkpoint or ``weights.pth`` carries (written since 2026-11-30 for
        weights; None for older files).
    dim : int
        Spatial dimensions.
    source : str
        Names the file in an error message.

    Returns
    -------
    dict or None
        Resolved as today's ``config.json`` is, so the two compare key by key; None when there
        is nothing stored or it no longer resolves (written by a version with other keys).
    """
    if stored is None:
        return None
    try:
        return resolve_config(stored_config(stored), dim, source=source)
    except ConfigError:
        return None
