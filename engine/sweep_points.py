"""One grid point of a sweep: find its experiment, tell how far it got, and take it the rest of the way.

A point's state is read from its experiment folder, not trusted from a record, so a point trained
or evaluated elsewhere (a cluster job, ``train_<d>d.py`` by hand) is collected like any other:

======== ===================================================================================
new      no experiment yet: trained from its config, as ``train_<d>d.py --config_file`` does
resume   an experiment without final weights: resumed from its last checkpoint
         (``--exp_num N --ckpt_epoch E``), or restarted when it has none
trained  final weights but no validation evaluation: evaluated on the validation split
done     a validation ``summary.json`` newer than the weights: its metrics are collected
failed   training diverged (the run is marked diverged): left alone, reported as failed. A run
         that crashed (marked failed: out of memory, a lost device) is resumed like any other
running  another live process works on it (its lock file), or, for an experiment started outside
         the sweep, its run is marked running and its folder changed in the last 10 minutes
======== ===================================================================================

The experiment of point K is the number recorded in ``points/point<K>.json``, or else the
experiment whose description carries the point's tag (``[sweep 2d/3 point 1: ...]``), so a number
lost to a crash between creating the folder and recording it is found again.
"""

import json
import os
import socket
import time
from pathlib import Path

from engine import experiment as xp
from engine.checkpoint import list_checkpoint_epochs
from engine.sweep_grid import point_tag, sweep_dir
from utils.errors import EXIT_INTERRUPTED, ConfigError, UserError
from utils.fileio import read_json, write_json
from utils.process import process_alive

ACTIVE_S = 600  # an experiment run outside the sweep that changed this recently counts as running
METRICS = ("n_pairs", "n_pairs_with_labels", "initial_dice_mean", "dice_mean", "dice_std", "folding_percent_mean",
           "folding_percent_std", "sdlogj_mean", "sdlogj_std", "hd95_mean", "eval_shape", "epoch")


class SweepInterrupted(Exception):
    """Training of a point was interrupted (Ctrl-C, SIGTERM); its checkpoint lets a re-run resume it."""


class PointBusy(UserError):
    """Another process works on this point."""


def record_path(folder, index):
    return Path(folder) / "points" / f"point{index}.json"


def read_record(folder, index):
    """``points/point<K>.json`` of a sweep folder ({} when absent or unreadable)."""
    path = record_path(folder, index)
    try:
        return read_json(path, what="point record") if path.is_file() else {}
    except ConfigError:
        return {}


def write_record(folder, index, **changes):
    """Merge ``changes`` into point K's record and write it atomically; returns the record."""
    record = {**read_record(folder, index), "index": index, **changes, "updated": xp.now()}
    write_json(record_path(folder, index), record)
    return record


def find_experiment(sweep, index):
    """Experiment number of point ``index`` (recorded, else found by its tag), or None."""
    dim, folder = sweep["dim"], sweep_dir(sweep["dim"], sweep["sweep"])
    root = xp.experiments_root(dim)
    tag = point_tag(dim, sweep["sweep"], index, sweep.get("token"))

    def tagged(number):
        # A deleted experiment's number is given to the next new one: the tag says whose it is.
        try:
            return tag in read_json(root / f"exp{number}" / "config.json").get("description", "")
        except (ConfigError, AttributeError, TypeError):
            return False
    recorded = read_record(folder, index).get("exp_num")
    if recorded is not None and tagged(recorded):
        return recorded
    return next((number for number in reversed(xp.list_experiments(dim)) if tagged(number)), None)


def find_val_summary(exp_folder, eval_size=None):
    """The newest validation ``summary.json`` of the final weights at ``eval_size``, or None.

    Searches every ``summary.json`` under ``eval/`` (whatever the folders are called) and keeps those
    of the validation split and the final weights on the experiment's own data, evaluated as the
    sweep evaluates a point (no refinement, no ``--fold_repair`` override, Dice on the native
    label maps), at ``eval_size`` (smallest side) or, when it is None, at the data's native shape,
    written after the current ``weights.pth``.
    """
    exp_folder = Path(exp_folder)
    weights = exp_folder / "weights.pth"
    if not weights.is_file() or not (exp_folder / "eval").is_dir():
        return None
    found, newest = None, weights.stat().st_mtime
    for path in (exp_folder / "eval").rglob("summary.json"):
        try:
            summary = read_json(path, what="summary")
        except ConfigError:
            continue
        if summary.get("split") != "val" or summary.get("checkpoint") != "final" or summary.get("data_tag"):
            continue  # a data_tag marks an evaluation on other data than the experiment's own
        if summary.get("refine_steps") or summary.get("fold_repair_override") or summary.get("score_on") == "eval":
            continue  # scores of another method than the point's own network
        if eval_size is None:
            ok = summary.get("eval_shape") is not None and summary.get("eval_shape") == summary.get("full_shape")
        else:
            ok = summary.get("eval_size") == eval_size
        mtime = path.stat().st_mtime
        if ok and mtime >= newest:
            found, newest = summary, mtime
    return found


def read_lock(path):
    try:
        return read_json(path, what="lock file")
    except ConfigError:
        return None


def lock_alive(lock, takeover=False):
    """Whether the process named in a lock still works: a live pid on this host; on another host,
    always (we cannot see it), unless ``takeover``."""
    if not lock:
        return False
    alive = process_alive(lock.get("pid"), lock.get("host"))
    return (not takeover) if alive is None else alive


class PointLock:
    """``points/point<K>.lock`` while this process works on point K (atomic create; stale ones replaced)."""

    def __init__(self, folder, index, takeover=False):
        self.path = Path(folder) / "points" / f"point{index}.lock"
        self.index, self.takeover = index, takeover

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                held = read_lock(self.path)
                if lock_alive(held, self.takeover):
                    raise PointBusy(f"point {self.index} is being run by pid {held['pid']} on {held['host']} "
                                    f"(since {held.get('started')}); wait for it, or pass --takeover if that "
                                    "process is gone") from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": xp.now()}, fh)
            return self
        raise PointBusy(f"could not lock point {self.index} ({self.path}); another process keeps claiming it")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _last_run(folder):
    try:
        runs = xp.read_metadata(folder).get("runs") or []
    except ConfigError:
        return {}
    return runs[-1] if runs else {}


def _recently_changed(folder):
    paths = [folder / "history.json", folder / "metadata.json", folder / "checkpoints"]
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return bool(times) and time.time() - max(times) < ACTIVE_S


def point_state(sweep, index, takeover=False):
    """How far point ``index`` got: ``{"status", "exp_num", "summary", "detail"}`` (see the module doc)."""
    folder = sweep_dir(sweep["dim"], sweep["sweep"])
    lock = read_lock(folder / "points" / f"point{index}.lock") if (folder / "points" / f"point{index}.lock").exists() \
        else None
    exp_num = find_experiment(sweep, index)
    state = {"status": "new", "exp_num": exp_num, "summary": None, "detail": ""}
    if lock_alive(lock, takeover):
        return {**state, "status": "running", "detail": f"pid {lock['pid']} on {lock['host']}"}
    if exp_num is None:
        return state
    exp_folder = xp.experiments_root(sweep["dim"]) / f"exp{exp_num}"
    summary = find_val_summary(exp_folder, sweep.get("eval_size"))
    if summary is not None:
        return {**state, "status": "done", "summary": summary}
    if (exp_folder / "weights.pth").is_file():
        return {**state, "status": "trained"}
    last = _last_run(exp_folder)
    # Runs before the "diverged" status marked a divergence "failed", with the loss in the message.
    if last.get("status") == "diverged" or (last.get("status") == "failed"
                                            and "non-finite training loss" in (last.get("message") or "")):
        return {**state, "status": "failed", "detail": last.get("message") or "training diverged"}
    if last.get("status") == "running" and lock is None and not takeover and (
            last.get("host") != socket.gethostname() or _recently_changed(exp_folder)):
        return {**state, "status": "running", "detail": f"experiment {exp_num} is training on {last.get('host')}"}
    epochs = list_checkpoint_epochs(exp_folder)
    detail = f"from epoch {epochs[-1]}" if epochs else "no checkpoint: restarted"
    if last.get("status") == "failed":
        detail += f", after a crash ({last.get('message') or 'no message'})"
    return {**state, "status": "resume", "detail": detail}


def metrics_of(summary):
    """The entries of an evaluation summary a sweep keeps."""
    return {k: summary.get(k) for k in METRICS}


def run_point(sweep, index, gpu_num=0, takeover=False, progress=True, n_panels=1):
    """Take point ``index`` of ``sweep`` to ``done``: train, resume or evaluate as its state needs.

    Parameters
    ----------
    sweep : dict
        Its ``sweep.json``.
    index : int
        Grid point.
    gpu_num : int
        ``cuda:<gpu_num>``; -1 for the CPU.
    takeover : bool
        Work on the point even if a lock from another host says it is running.
    progress : bool
        Show the evaluation's progress bar.
    n_panels : int
        Example registration panels the validation evaluation draws.

    Returns
    -------
    dict
        The point's record (``exp_num``, ``status``, ``metrics``).

    Raises
    ------
    SweepInterrupted
        Training was interrupted; the checkpoint it wrote lets a re-run resume.
    PointBusy
        Another process works on this point.
    """
    from engine.evaluation import evaluate_experiment
    from engine.training import Trainer
    from utils.cli import train_parser

    dim = sweep["dim"]
    folder = sweep_dir(dim, sweep["sweep"])
    point = sweep["points"][index]
    state = point_state(sweep, index, takeover)
    if state["status"] == "running":
        raise PointBusy(f"point {index} is running ({state['detail']}); run the sweep again when it has finished")
    base = {"params": point["params"], "dim": dim}
    if state["status"] == "done":
        return write_record(folder, index, **base, exp_num=state["exp_num"], status="done",
                            metrics=metrics_of(state["summary"]))
    if state["status"] == "failed":
        return write_record(folder, index, **base, exp_num=state["exp_num"], status="failed", detail=state["detail"])
    with PointLock(folder, index, takeover):
        exp_num = state["exp_num"]
        if state["status"] in ("new", "resume"):
            if state["status"] == "new":
                argv = ["--config_file", str(folder / point["config"])]
            else:
                epochs = list_checkpoint_epochs(xp.experiments_root(dim) / f"exp{exp_num}")
                argv = ["--exp_num", str(exp_num)] + (["--ckpt_epoch", str(epochs[-1])] if epochs else [])
            trainer = Trainer(dim, train_parser(dim).parse_args(argv + ["--gpu_num", str(gpu_num)]))
            exp_num = trainer.exp_num
            write_record(folder, index, **base, exp_num=exp_num, status="training")
            code = trainer.run()
            if code == EXIT_INTERRUPTED:
                write_record(folder, index, status="interrupted")
                raise SweepInterrupted(f"point {index} (experiment {exp_num}) was interrupted")
            if code != 0:
                meta = _last_run(xp.experiments_root(dim) / f"exp{exp_num}")
                return write_record(folder, index, status="failed", detail=meta.get("message") or f"exit {code}")
        eval_size = sweep.get("eval_size")
        summaries = evaluate_experiment(dim, exp_num, sizes=[eval_size] if eval_size else None, split="val",
                                        gpu_num=gpu_num, n_panels=n_panels, progress=progress)
        return write_record(folder, index, **base, exp_num=exp_num, status="done", metrics=metrics_of(summaries[0]))


__all__ = ["PointBusy", "PointLock", "SweepInterrupted", "find_experiment", "find_val_summary", "lock_alive",
           "metrics_of", "point_state", "read_record", "run_point", "write_record"]
