"""Numbered experiment folders and their ``metadata.json``.

Layout of ``experiments/<2d|3d>/exp<N>/``::

    config.json          resolved config (what a restart reads; the user may edit it)
    metadata.json        exp_num, description, model_name, n_params, dim, train_size, runs, ...
    history.json         per-epoch metrics of the current run (also inside every checkpoint)
    logs/run<k>/         TensorBoard events of run k (a restart starts run k+1; a resume continues k)
    checkpoints/ckpt_epoch<E>.pt
    weights.pth          final weights, with the model config that rebuilds them
    plots/               validation Dice and losses against epochs (PNG)
    previous_runs/run<k>/  checkpoints, weights, plots and history of run k, replaced by a restart
    previous_runs/run<k>_after_epoch<E>/  what run k wrote after epoch E, before a resume from E
    eval/                evaluation outputs

The experiments root is ``experiments/`` beside this package, or ``$FNOREG_EXPERIMENTS_DIR``.
Numbers are claimed with an atomic ``mkdir``, so two runs started at the same moment never
share a folder.
"""

import datetime
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from engine.checkpoint import checkpoint_path, list_checkpoint_epochs
from utils.errors import UserError
from utils.fileio import read_json, write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
_EXP = re.compile(r"^exp(\d+)$")
# What a restart moves to previous_runs/run<k>/ (evaluations too: they scored the old weights).
RUN_ARTEFACTS = ("checkpoints", "weights.pth", "plots", "history.json", "eval")
# An evaluation folder's checkpoint: final_<size>... or epoch<E>_<size>... (engine.evaluation.output_folder).
_EVAL_CHECKPOINT = re.compile(r"^(final|epoch(\d+))_\d+(_|$)")


def experiments_root(dim):
    """Folder holding the ``exp<N>`` folders of ``dim``-D experiments."""
    base = Path(os.environ.get("FNOREG_EXPERIMENTS_DIR", REPO_ROOT / "experiments"))
    return base / f"{dim}d"


def list_experiments(dim):
    """Sorted experiment numbers that exist for ``dim``."""
    root = experiments_root(dim)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _EXP.match(p.name)))


def create_experiment(dim):
    """Claim the next free experiment number; returns ``(exp_num, folder)``."""
    root = experiments_root(dim)
    root.mkdir(parents=True, exist_ok=True)
    number = (max(list_experiments(dim)) + 1) if list_experiments(dim) else 1
    while True:
        folder = root / f"exp{number}"
        try:
            folder.mkdir()  # atomic: exactly one concurrent caller succeeds
            return number, folder
        except FileExistsError:
            number += 1


def experiment_dir(dim, exp_num):
    """Folder of an existing experiment, or a UserError: the ones that exist, or how to restore its config."""
    folder = experiments_root(dim) / f"exp{exp_num}"
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise UserError(_missing_config_message(folder, exp_num))
    if not (folder / "config.json").is_file():
        existing = list_experiments(dim)
        have = ", ".join(map(str, existing)) if existing else "none yet"
        raise UserError(
            f"experiment {exp_num} not found in {experiments_root(dim)} (existing {dim}D experiments: {have}); "
            f"start one with train_{dim}d.py --config_file CONFIG"
        )
    return folder


def _missing_config_message(folder, exp_num):
    """Experiment ``exp_num``'s folder exists without its ``config.json``: say so and how to restore it."""
    config = folder / "config.json"
    checkpoints = sorted((folder / "checkpoints").glob("ckpt_epoch*.pt"),
                         key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    if checkpoints:
        source = checkpoints[-1]
        how = (f"restore it from the copy every checkpoint holds: python -c \"import json, torch; json.dump(torch.load("
               f"'{source}', weights_only=True)['config'], open('{config}', 'w'), indent=2)\"")
    else:
        how = "restore it from a backup, or copy the config file the experiment was started with there"
    return f"experiment {exp_num} has no config.json ({config} is missing); {how}"


def now():
    """Local time, ISO 8601 with offset, to the second."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def software_versions():
    """Versions of the pieces that decide the numbers."""
    import numpy
    import torch

    try:
        from importlib.metadata import version

        neuralop = version("neuraloperator")
    except Exception:  # noqa: BLE001 - metadata may be missing in odd installs
        neuralop = None
    return {"python": platform.python_version(), "torch": torch.__version__, "neuraloperator": neuralop,
            "numpy": numpy.__version__}


def git_commit():
    """Commit of the code that runs, with ``-dirty`` when it has uncommitted changes; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def read_metadata(folder):
    """Parsed ``metadata.json`` of an experiment folder."""
    return read_json(Path(folder) / "metadata.json", what="metadata file")


def write_metadata(folder, metadata):
    write_json(Path(folder) / "metadata.json", metadata)


def new_metadata(exp_num, config, n_params, train_size, device):
    """The metadata of a freshly created experiment (no runs yet)."""
    return {
        "exp_num": exp_num,
        "description": config["description"],
        "model_name": config["model_name"],
        "n_params": n_params,
        "dim": config["dim"],
        "train_size": list(train_size),
        "created": now(),
        "runs": [],
        "versions": software_versions(),
        "git_commit": git_commit(),
        "device": str(device),
    }


def launch_command():
    """The command line that started this run.

    Under ``torchrun`` (which sets ``LOCAL_RANK``) each process is a worker that torchrun
    started; the line a user typed is torchrun's, read from its process (Linux; elsewhere, or
    when the parent is not torchrun, the worker's own line).
    """
    own = shlex.join([Path(sys.executable).name] + sys.argv)
    if "LOCAL_RANK" not in os.environ:
        return own
    try:
        parent = [p.decode(errors="replace") for p in
                  Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0") if p]
    except OSError:
        return own
    for i, part in enumerate(parent[:3]):
        if Path(part).name == "torchrun":
            return shlex.join(["torchrun"] + parent[i + 1:])
        if part == "torch.distributed.run":
            return shlex.join([Path(parent[0]).name] + parent[1:])
    return own


def start_run(folder, kind, start_epoch, device, train_size=None, n_params=None):
    """Append a run entry (``kind``: start / restart / resume) with status ``running``; returns its index."""
    meta = read_metadata(folder)
    run = {
        "kind": kind,
        "start_time": now(),
        "end_time": None,
        "start_epoch": start_epoch,
        "end_epoch": None,
        "status": "running",
        "device": str(device),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "command": launch_command(),
        "git_commit": git_commit(),
    }
    meta["runs"].append(run)
    meta["device"] = str(device)
    meta["versions"] = software_versions()
    meta["git_commit"] = run["git_commit"]
    if train_size is not None:
        meta["train_size"] = list(train_size)
    if n_params is not None:
        meta["n_params"] = n_params
    write_metadata(folder, meta)
    return len(meta["runs"]) - 1


def end_run(folder, index, status, end_epoch, message=None, **fields):
    """Close run ``index`` with ``status`` (finished / interrupted / failed); ``fields`` are recorded too."""
    meta = read_metadata(folder)
    run = meta["runs"][index]
    run.update(end_time=now(), end_epoch=end_epoch, status=status, **fields)
    if message:
        run["message"] = message
    write_metadata(folder, meta)


def log_run_number(folder):
    """Number k of the TensorBoard folder ``logs/run<k>`` for the current start (1 + restarts)."""
    meta = read_metadata(folder)
    return sum(1 for r in meta["runs"] if r["kind"] in ("start", "restart"))


def archive_previous_run(folder):
    """Move the artefacts of the current run into ``previous_runs/run<k>/`` before a restart.

    TensorBoard logs stay where they are (each run has its own ``logs/run<k>``), so old and new
    curves can be compared in one TensorBoard view. Returns the archive folder, or None if the
    experiment had nothing to archive.
    """
    folder = Path(folder)
    # Named after the run it holds, like its TensorBoard logs (read first: nothing moves on an error).
    archive = f"run{log_run_number(folder)}"
    return _archive(folder, [folder / name for name in RUN_ARTEFACTS if (folder / name).exists()], archive)


def archive_after(folder, epoch, partial=False):
    """Move what a run wrote after ``epoch`` into ``previous_runs/run<k>_after_epoch<E>/`` before a resume from it.

    A resume from an earlier checkpoint trains the later epochs again and would overwrite their
    checkpoints, the final weights and (under the same folder names) their evaluations: those
    are kept, at the same relative paths, as a restart keeps a whole run. With ``partial`` (the
    resumed checkpoint is an interruption's, which the run replaces by the whole epoch's) the
    evaluations of ``epoch`` itself go too. Returns the archive folder, or None when nothing
    came after ``epoch``.
    """
    folder = Path(folder)
    name = f"run{log_run_number(folder)}_after_epoch{epoch}"  # the later part of run k (logs/run<k>)
    paths = [checkpoint_path(folder, e) for e in list_checkpoint_epochs(folder) if e > epoch]
    paths += [folder / "weights.pth"] if (folder / "weights.pth").exists() else []
    if (folder / "eval").is_dir():
        for sub in sorted((folder / "eval").iterdir()):
            m = _EVAL_CHECKPOINT.match(sub.name)
            if sub.is_dir() and m and (m.group(1) == "final" or int(m.group(2)) > epoch
                                       or (partial and int(m.group(2)) == epoch)):
                paths.append(sub)
    return _archive(folder, paths, name)


def _archive(folder, paths, name):
    """Move ``paths`` (inside ``folder``) into a new ``previous_runs/<name>/`` under their relative paths.

    A name already taken (the same epoch resumed twice) gets ``_2``, ``_3``, ...
    """
    if not paths:
        return None
    target, k = folder / "previous_runs" / name, 1
    while target.exists():
        k += 1
        target = folder / "previous_runs" / f"{name}_{k}"
    for path in paths:
        dest = target / path.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))
    return target
