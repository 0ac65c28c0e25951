"""What a sweep is: its grid, the config of each grid point, and the folder that records it.

A sweep trains one ordinary numbered experiment per grid point. Its folder,
``experiments/<d>d/sweeps/sweep<N>/`` (beside the ``exp<N>`` folders it makes), holds::

    sweep.json            the grid, the base config (resolved, overrides applied), the command, and
                          the identity ``key`` that lets the same command find this sweep again
    configs/point<K>.json the config of grid point K (what train_<d>d.py --config_file would read)
    points/point<K>.json  grid point K's state: experiment number, status, validation metrics
    points/point<K>.lock  present while a process works on point K (host, pid)
    logs/point<K>.log     console output of point K when run in a subprocess (--gpus)
    results.csv, results.md, sweep.png   the table and the Figure-3-style plot

A parameter is named by a ``train_config`` key (``reg_param``) or a dotted path into the config
(``model_config.n_layers``, ``data_config.phantom.seed``); values are JSON (``0.01``, ``4``,
``"ncc"``, ``null``) and anything that is not JSON is a string. Points are the Cartesian product of
the ``--param``/``--values`` pairs, the first parameter varying slowest. Every point config is
validated by :func:`engine.config.resolve_config` before anything is written.
"""

import copy
import itertools
import json
import secrets
from pathlib import Path

from engine import experiment as xp
from engine.config import find_config_file, resolve_config
from utils.errors import ConfigError, UserError
from utils.fileio import read_json, write_json

SECTIONS = ("model_config", "train_config", "data_config")


def parse_value(text):
    """A ``--values``/``--set`` value: JSON when it parses (``0.01``, ``4``, ``null``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def param_path(name):
    """Config path of a parameter name: a bare key is a ``train_config`` key, a dotted name a full path.

    Raises
    ------
    ConfigError
        A dotted name that does not start with a config section.
    """
    parts = name.split(".")
    if len(parts) == 1:
        return ("train_config", name)
    if parts[0] not in SECTIONS or not all(parts):
        raise ConfigError(f"parameter {name!r} must be a train_config key (reg_param) or a dotted path starting "
                          f"with one of {', '.join(SECTIONS)} (e.g. model_config.n_layers)")
    return tuple(parts)


def parse_overrides(items):
    """``["train_config.epochs=2", "seg_param=0"]`` -> ``{"train_config.epochs": 2, "seg_param": 0}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r} must be KEY=VALUE, e.g. --set train_config.epochs=2")
        param_path(key)
        out[key] = parse_value(value)
    return out


def set_param(config, name, value):
    """Set parameter ``name`` (see :func:`param_path`) in a config dict, in place."""
    *parents, last = param_path(name)
    node = config
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {name}: {part} is not an object in the config")
        node = child
    node[last] = value


def expand_grid(params, values):
    """Grid points as ``[{param: value, ...}]``, the Cartesian product in order (first param slowest).

    Parameters
    ----------
    params : list of str
        Parameter names, each at most once.
    values : list of list
        Values of each parameter, in the order to run them.
    """
    if not params:
        raise UserError("give at least one --param NAME --values V1 V2 ...")
    if len(params) != len(values):
        raise UserError(f"{len(params)} --param but {len(values)} --values; give one --values list after each --param")
    if len(set(params)) != len(params):
        raise UserError(f"a parameter is given twice: {', '.join(params)}")
    for name, vals in zip(params, values):
        if not vals:
            raise UserError(f"--param {name} has no --values")
        if len({json.dumps(v) for v in vals}) != len(vals):
            raise UserError(f"--values of {name} repeat a value: {' '.join(map(json.dumps, vals))}")
    return [dict(zip(params, combo)) for combo in itertools.product(*values)]


def point_config(base, assignments):
    """``base`` (a resolved config) with each ``{param: value}`` of ``assignments`` set; a deep copy."""
    config = copy.deepcopy(base)
    for name, value in assignments.items():
        set_param(config, name, value)
    return config


def resolve_base(config_file, dim, overrides, train_size=None):
    """Load ``--config_file``, apply ``--set`` overrides and ``--size``, and validate the result.

    Returns
    -------
    config : dict
        The resolved base config.
    path : pathlib.Path
        The config file found.
    raw : dict
        The file as parsed (what :func:`sweep_key` identifies it by: unlike the resolved config, it
        does not change when a code default does).
    """
    path = find_config_file(config_file)
    raw = read_json(path)
    base = resolve_config(copy.deepcopy(raw), dim, source=str(path))
    changes = dict(overrides)
    if train_size is not None:
        changes["size"] = train_size
    try:
        base = resolve_config(point_config(base, changes), dim, source=f"{path} with --set/--size")
    except ConfigError as exc:
        raise ConfigError(f"--set: {exc}") from None
    return base, path, raw


def describe(assignments):
    """``reg_param=0.01, seg_param=0``: a point's parameters in one short string."""
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in assignments.items())


def point_tag(dim, sweep, index, token=None):
    """Text put in a point's experiment description; also how a lost experiment number is found again.

    ``token``, random hex digits drawn when the sweep is created (``sweep.json``), tells this
    sweep from an earlier one of the same number: sweep numbers start again at 1 when the sweeps
    folder is deleted but the experiments are kept. Sweeps written before it have none.
    """
    name = f"{dim}d/{sweep}" + (f"#{token}" if token else "")
    return f"[sweep {name} point {index}:"


def build_points(base, dim, grid, fixed=None):
    """Resolve every grid point's config; fails on the first invalid one, before anything is written.

    Parameters
    ----------
    base : dict
        Resolved base config.
    dim : int
        2 or 3.
    grid : list of dict
        Assignments of each point (:func:`expand_grid`).
    fixed : dict, optional
        Assignments common to every point (the value carried over from an earlier stage).

    Returns
    -------
    list of dict
        ``{"index", "params", "config"}`` per point.
    """
    points = []
    for index, assignment in enumerate(grid):
        changes = {**(fixed or {}), **assignment}
        try:
            config = resolve_config(point_config(base, changes), dim, source=f"grid point {describe(assignment)}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (from --param/--values)") from None
        points.append({"index": index, "params": assignment, "config": config})
    return points


def sweep_key(dim, raw_base, overrides, train_size, params, values, eval_size, fixed=None):
    """The identity of a sweep: same key, same sweep (a re-run continues it instead of starting another).

    Built from the base config file's content (not its path), the overrides, the grid and the
    evaluation size: editing the base config or changing any of these makes another sweep.
    """
    return json.loads(json.dumps({"dim": dim, "base": raw_base, "overrides": overrides, "train_size": train_size,
                                  "params": params, "values": values, "fixed": fixed or {},
                                  "eval_size": eval_size}, sort_keys=True))


def sweeps_root(dim):
    """``experiments/<d>d/sweeps`` (under ``$FNOREG_EXPERIMENTS_DIR`` when it is set)."""
    return xp.experiments_root(dim) / "sweeps"


def list_sweeps(dim):
    """Sorted numbers of the sweeps of ``dim``-D experiments that have a ``sweep.json``."""
    root = sweeps_root(dim)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.name.startswith("sweep") and p.name[5:].isdigit() and (p / "sweep.json").is_file():
            out.append(int(p.name[5:]))
    return sorted(out)


def sweep_dir(dim, number):
    return sweeps_root(dim) / f"sweep{number}"


def load_sweep(dim, number):
    """``sweep.json`` of an existing sweep, or a UserError listing those that exist."""
    path = sweep_dir(dim, number) / "sweep.json"
    if not path.is_file():
        have = ", ".join(map(str, list_sweeps(dim))) or "none yet"
        raise UserError(f"sweep {number} not found in {sweeps_root(dim)} (existing {dim}D sweeps: {have})")
    return read_json(path, what="sweep file")


def find_sweep(dim, key):
    """Number of the newest sweep of ``dim`` whose key equals ``key``, or None."""
    for number in reversed(list_sweeps(dim)):
        try:
            if read_json(sweep_dir(dim, number) / "sweep.json", what="sweep file").get("key") == key:
                return number
        except ConfigError:
            continue
    return None


def create_sweep(spec, points):
    """Claim the next sweep number (atomic ``mkdir``) and write ``sweep.json`` and the point configs.

    Parameters
    ----------
    spec : dict
        Everything of ``sweep.json`` but ``sweep`` (the number) and ``points``.
    points : list of dict
        From :func:`build_points`; each point's description gets its :func:`point_tag`.

    Returns
    -------
    dict
        The ``sweep.json`` written.
    """
    dim = spec["dim"]
    root = sweeps_root(dim)
    root.mkdir(parents=True, exist_ok=True)
    number = (max(list_sweeps(dim) + [_highest_folder(root)]) + 1)
    while True:
        folder = root / f"sweep{number}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            number += 1
    (folder / "configs").mkdir()
    (folder / "points").mkdir()
    token = secrets.token_hex(4)
    entries = []
    for point in points:
        config = copy.deepcopy(point["config"])
        tag = point_tag(dim, number, point["index"], token)
        config["description"] = f"{config['description']} {tag} {describe(point['params'])}]".strip()
        path = folder / "configs" / f"point{point['index']}.json"
        write_json(path, config)
        entries.append({"index": point["index"], "params": point["params"], "config": str(path.relative_to(folder))})
    sweep = {"sweep": number, "token": token, **spec, "points": entries, "created": xp.now()}
    write_json(folder / "sweep.json", sweep)
    return sweep


def _highest_folder(root):
    numbers = [int(p.name[5:]) for p in Path(root).iterdir() if p.name.startswith("sweep") and p.name[5:].isdigit()]
    return max(numbers, default=0)


__all__ = ["build_points", "create_sweep", "describe", "expand_grid", "find_sweep", "list_sweeps", "load_sweep",
           "param_path", "parse_overrides", "parse_value", "point_config", "point_tag", "resolve_base",
           "set_param", "sweep_dir", "sweep_key", "sweeps_root"]
