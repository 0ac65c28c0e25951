"""Validation and defaults of the ``data_config`` section.

Schema (every key optional; unknown keys and wrong types are errors naming the key)::

    "data_config": {
        "dataset": "phantom" | "oasis",            default "phantom" (runs on a fresh clone)
        "root": "/path/to/neurite-oasis-2d",        oasis only: the folder holding subjects.txt
        "label_scheme": "seg24" | "seg4" (2D), "seg35" | "seg4" (3D)   default seg24 / seg35
        "splits": {"train": [0, 200], "val": [201, 212], "test": [213, 413]},
                                                    inclusive line-index ranges (null: unused);
                                                    default: the published protocol for oasis,
                                                    5/8 - 1/8 - 1/4 of the phantom's subjects
        "train_pairs": "all_ordered" | "consecutive" | "consecutive_one_way",
                                                    default all_ordered (2D), consecutive (3D)
        "eval_pairs":  same choices,                default consecutive (2D),
                                                    consecutive_one_way (3D)
        "antialias": false,                         Gaussian low-pass before downsampling
        "require_labels": false,                    true: a missing label file is an error
        "phantom": {"n_subjects": 64 (2D) / 20 (3D),
                    "shape": [160, 192] / [160, 192, 224],
                    "seed": 0}                      phantom only
    }

"consecutive" means neighbours in both directions, ``(i, i+1)`` and ``(i+1, i)``;
"consecutive_one_way" only ``(i, i+1)``. See :mod:`data.pairs` for the published protocols.
"""

from __future__ import annotations

import copy

from data.labels import SCHEMES_FOR_DIM, check_scheme, default_scheme
from data.pairs import (PAIR_PROTOCOLS, PUBLISHED_EVAL_PAIRS, PUBLISHED_SPLITS,
                        PUBLISHED_TRAIN_PAIRS, SPLIT_NAMES, default_splits, warn_overlaps)
from utils.errors import ConfigError
from utils.schema import check_choice, check_unknown, check_value

DATASETS = ("phantom", "oasis")
PHANTOM_DEFAULTS = {
    2: {"n_subjects": 64, "shape": [160, 192], "seed": 0},
    3: {"n_subjects": 20, "shape": [160, 192, 224], "seed": 0},
}
_KEYS = ("dataset", "root", "label_scheme", "splits", "train_pairs", "eval_pairs", "antialias",
         "require_labels", "phantom")
_TYPES = {"dataset": str, "root": (str, type(None)), "label_scheme": str, "splits": dict,
          "train_pairs": str, "eval_pairs": str, "antialias": bool, "require_labels": bool,
          "phantom": (dict, type(None))}


def _validate_phantom(given: dict, dim: int) -> dict:
    check_unknown(given, PHANTOM_DEFAULTS[dim], "data_config.phantom")
    out = {**PHANTOM_DEFAULTS[dim], **given}
    check_value(out["n_subjects"], int, "data_config.phantom.n_subjects")
    check_value(out["seed"], int, "data_config.phantom.seed")
    check_value(out["shape"], list, "data_config.phantom.shape")
    if out["n_subjects"] < 2:
        raise ConfigError(f"data_config.phantom.n_subjects must be >= 2, got {out['n_subjects']}")
    shape = out["shape"]
    if len(shape) != dim or any(isinstance(s, bool) or not isinstance(s, int) or s < 16
                                for s in shape):
        raise ConfigError(f"data_config.phantom.shape must list {dim} integers >= 16 for {dim}D, "
                          f"got {shape!r}")
    out["shape"] = list(shape)
    return out


def _validate_splits(given: dict, defaults: dict) -> dict:
    check_unknown(given, SPLIT_NAMES, "data_config.splits")
    out = {**defaults, **given}
    for name in SPLIT_NAMES:
        rng, key = out[name], f"data_config.splits.{name}"
        if rng is None:
            continue
        ok = (isinstance(rng, list) and len(rng) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in rng))
        if not ok:
            raise ConfigError(f"{key} must be an inclusive range [first, last] of two integers, "
                              f"got {rng!r}")
        if not 0 <= rng[0] <= rng[1]:
            raise ConfigError(f"{key} = {rng} must satisfy 0 <= first <= last")
        out[name] = list(rng)
    return out


def validate_data_config(cfg: dict | None, dim: int) -> dict:
    """Check a ``data_config`` dict and return a resolved copy with every default filled.

    Parameters
    ----------
    cfg : dict or None
        The ``data_config`` section of a run config (None or {} gives the phantom defaults).
    dim : int
        2 or 3.

    Returns
    -------
    dict
        A new dict with every key of the schema (see the module docstring); validating it again
        returns an equal dict.

    Raises
    ------
    ConfigError
        An unknown key, a value of the wrong type or outside its choices, or a phantom split that
        does not fit the phantom's subject count; the message names the key.
    """
    if dim not in SCHEMES_FOR_DIM:
        raise ConfigError(f"dim must be 2 or 3, got {dim!r}")
    cfg = {} if cfg is None else cfg
    check_value(cfg, dict, "data_config")
    check_unknown(cfg, _KEYS, "data_config")
    for key, value in cfg.items():
        check_value(value, _TYPES[key], f"data_config.{key}")
    cfg = copy.deepcopy(cfg)

    out = {"dataset": cfg.get("dataset", "phantom")}
    check_choice(out["dataset"], DATASETS, "data_config.dataset")
    is_oasis = out["dataset"] == "oasis"

    out["root"] = cfg.get("root")
    if is_oasis and not out["root"]:
        raise ConfigError("data_config.root is required with dataset 'oasis': the folder holding "
                          "subjects.txt (python -m data.download prints it)")
    out["label_scheme"] = check_scheme(cfg.get("label_scheme", default_scheme(dim)), dim)

    phantom = cfg.get("phantom") or {}
    out["phantom"] = None if is_oasis else _validate_phantom(phantom, dim)
    if is_oasis and phantom:
        raise ConfigError("data_config.phantom is only used with dataset 'phantom'; remove it")
    n_phantom = None if is_oasis else out["phantom"]["n_subjects"]
    given_splits = cfg.get("splits", {})
    if is_oasis:
        split_defaults = PUBLISHED_SPLITS[dim]
    elif set(SPLIT_NAMES) <= set(given_splits):
        split_defaults = {}  # all given: a phantom too small for the default ranges is fine
    elif n_phantom < 6:
        raise ConfigError(f"data_config.phantom.n_subjects = {n_phantom} is too few for the default "
                          f"splits (6 needed, 2 per split); set data_config.splits explicitly")
    else:
        split_defaults = default_splits(n_phantom)
    out["splits"] = _validate_splits(given_splits, split_defaults)
    if n_phantom is not None:
        for name, rng in out["splits"].items():
            if rng is not None and rng[1] >= n_phantom:
                raise ConfigError(f"data_config.splits.{name} = {rng} needs {rng[1] + 1} subjects "
                                  f"but data_config.phantom.n_subjects is {n_phantom}")
    warn_overlaps(out["splits"])

    for key, default in (("train_pairs", PUBLISHED_TRAIN_PAIRS[dim]),
                         ("eval_pairs", PUBLISHED_EVAL_PAIRS[dim])):
        out[key] = cfg.get(key, default)
        check_choice(out[key], PAIR_PROTOCOLS, f"data_config.{key}")
    out["antialias"] = cfg.get("antialias", False)
    out["require_labels"] = cfg.get("require_labels", False)
    return {key: out[key] for key in _KEYS}
