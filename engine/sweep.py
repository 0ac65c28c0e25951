"""Hyperparameter sweeps (companion paper, section 4.3): the code behind ``sweep.py``.

``python sweep.py --config_file BASE --dim 2 --param reg_param --values 0.001 0.01 0.1 1`` trains
one ordinary numbered experiment per grid point (``experiments/<d>d/exp<N>/``, evaluable, resumable
and viewable in TensorBoard like any other), evaluates each on the validation split and writes the
table and the Figure-3-style plot into ``experiments/<d>d/sweeps/sweep<N>/`` (layout in
:mod:`engine.sweep_grid`).

- **Re-running** the same command finds the sweep with the same base config, overrides and grid
  (and says so); ``--sweep N`` names it. Points that are done are collected, a trained point is
  evaluated, an unfinished one resumes from its last checkpoint, a new one is trained
  (:mod:`engine.sweep_points`). ``--new`` starts a fresh sweep instead.
- **Parallel**: ``--gpus 0 1 2 3`` runs one point per GPU at a time, each in its own process
  (``sweep.py --dim D --sweep N --only_point K --gpu_num G``, console in ``logs/point<K>.log``).
- **Elsewhere**: ``--print_commands`` prints that command for every unfinished point (for a SLURM
  job array, say) and stops; running the sweep command again collects what they produced.
- **Coordinate descent** (``--mode coordinate``): the paper's two stages in order. Stage 1 sweeps
  ``--stage1_param`` (lambda, on 2D data with gamma = 0), the best value (rule in
  :mod:`engine.sweep_report`) is carried into stage 2, which sweeps ``--stage2_param`` (gamma), by
  default on the same config, or on ``--stage2_config`` in ``--stage2_dim`` (3D in the paper).
  Each stage is a sweep of its own; stage 2's folder also gets ``coordinate.png`` (both panels,
  the paper's Figure 3) and ``coordinate.md``.
"""

import argparse
import os
import subprocess
import sys
import time

from tqdm import tqdm

from engine import experiment as xp
from engine.sweep_grid import (build_points, create_sweep, describe, expand_grid, find_sweep, load_sweep,
                               parse_overrides, parse_value, resolve_base, sweep_dir, sweep_key)
from engine.sweep_points import (PointBusy, SweepInterrupted, metrics_of, point_state, read_record, run_point,
                                 write_record)
from engine.sweep_report import choose_best, markdown_table, result_rows, save_coordinate_plot, sweep_title, \
    write_reports
from utils.errors import EXIT_INTERRUPTED, UserError

FINISHED = ("done", "failed")


def sweep_parser():
    """Flags of ``sweep.py``."""
    p = argparse.ArgumentParser(prog="sweep.py", description="Grid search over config values: one experiment per "
                                "point, evaluated on the validation split (companion paper, section 4.3).")
    p.add_argument("--config_file", help="base JSON config (a path, or a file name in configs/)")
    p.add_argument("--dim", type=int, choices=(2, 3), required=True, help="2 or 3 (stage 1's in coordinate mode)")
    p.add_argument("--param", action="append", default=[], help="parameter to vary: a train_config key "
                   "(reg_param) or a dotted path (model_config.n_layers); repeat with --values for a full grid")
    p.add_argument("--values", action="append", nargs="+", default=[], type=parse_value, metavar="V",
                   help="values of the preceding --param (JSON: 0.01, 4, null; else a string)")
    p.add_argument("--mode", choices=("grid", "coordinate"), default="grid",
                   help="grid (default) or coordinate: stage 1, then stage 2 with stage 1's best value")
    p.add_argument("--stage1_param", help="coordinate mode: first parameter (reg_param in the paper)")
    p.add_argument("--stage1_values", nargs="+", type=parse_value, metavar="V")
    p.add_argument("--stage2_param", help="coordinate mode: second parameter (seg_param in the paper)")
    p.add_argument("--stage2_values", nargs="+", type=parse_value, metavar="V")
    p.add_argument("--stage2_config", help="coordinate mode: base config of stage 2 (default --config_file)")
    p.add_argument("--stage2_dim", type=int, choices=(2, 3),
                   help="coordinate mode: dimension of stage 2 (default --dim)")
    p.add_argument("--stage2_set", action="append", default=[], metavar="KEY=VALUE", help="override for stage 2 only")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a base config value for every point, e.g. --set train_config.epochs=2")
    p.add_argument("--size", type=int, help="training size, smallest side, for every point (as train_<d>d.py --size)")
    p.add_argument("--eval_size", type=int, help="validation evaluation size, smallest side (default: native)")
    p.add_argument("--gpu_num", type=int, default=0, help="GPU index (cuda:K); -1 runs on the CPU (default 0)")
    p.add_argument("--gpus", type=int, nargs="+", metavar="K", help="run points in parallel, one process per "
                   "listed GPU (repeat an id for two per GPU; -1 is a CPU process)")
    p.add_argument("--sweep", type=int, help="continue sweep N (experiments/<d>d/sweeps/sweep<N>)")
    p.add_argument("--new", action="store_true", help="start a new sweep even if one with this grid exists")
    p.add_argument("--only_point", type=int, metavar="K", help="run grid point K only (what --gpus and "
                   "--print_commands launch); no table")
    p.add_argument("--print_commands", action="store_true", help="print one command per unfinished point and stop")
    p.add_argument("--takeover", action="store_true", help="resume points another host's lock says are running")
    p.add_argument("--dice_tol", type=float, default=0.0, help="best point: least folding among points within "
                   "this much of the best Dice (default 0: the best Dice)")
    p.add_argument("--max_folding", type=float, help="best point: ignore points folding more than this percentage")
    p.add_argument("--n_panels", type=int, default=1, help="example panels per validation evaluation (default 1)")
    return p


# ----------------------------------------------------------------------------------- sweeps
def open_sweep(dim, config_file, params, values, overrides, args, fixed=None, stage=None, number=None, new=False):
    """The sweep for this grid: sweep ``number``, an existing one with the same key, or a new one.

    Returns
    -------
    sweep : dict
        Its ``sweep.json``.
    note : str
        What happened ("new sweep 3", "continuing sweep 3 ...").
    """
    if number is not None and not config_file:
        return load_sweep(dim, number), f"sweep {dim}d/{number}"
    if not config_file:
        raise UserError("give --config_file BASE (and --param/--values), or --sweep N to continue a sweep")
    base, path, raw = resolve_base(config_file, dim, overrides, args.size)
    grid = expand_grid(params, values)
    points = build_points(base, dim, grid, fixed)
    key = sweep_key(dim, raw, overrides, args.size, params, values, args.eval_size, fixed)
    if number is not None:
        sweep = load_sweep(dim, number)
        if sweep.get("key") != key:
            raise UserError(f"sweep {number} was made with another config or grid; drop --sweep to find or start "
                            "the sweep of this command")
        return sweep, f"continuing sweep {dim}d/{number}"
    found = None if new else find_sweep(dim, key)
    if found is not None:
        return load_sweep(dim, found), f"continuing sweep {dim}d/{found} (same config and grid)"
    spec = {"dim": dim, "mode": "grid", "key": key, "params": params, "values": values,
            "base_config_file": str(path), "base_config": base, "overrides": overrides, "fixed": fixed or {},
            "train_size": args.size, "eval_size": args.eval_size, "stage": stage,
            "command": " ".join(["sweep.py"] + args.argv)}
    sweep = create_sweep(spec, points)
    return sweep, f"new sweep {dim}d/{sweep['sweep']} with {len(points)} points"


def point_command(sweep, index, gpu_num, args=None):
    """The command that runs one point (``--only_point``), as printed and as launched by ``--gpus``."""
    cmd = ["sweep.py", "--dim", str(sweep["dim"]), "--sweep", str(sweep["sweep"]), "--only_point", str(index),
           "--gpu_num", str(gpu_num)]
    if args is not None and args.n_panels != 1:
        cmd += ["--n_panels", str(args.n_panels)]
    if args is not None and args.takeover:
        cmd.append("--takeover")
    return cmd


def schedule(indices, slots, launch, on_done=None, poll_s=2.0, sleep=time.sleep):
    """Run ``launch(index, slot)`` for every index, one at a time per slot; returns ``{index: exit code}``.

    ``launch`` returns a process-like object with ``poll()`` (and ``wait()``). A child that exits 2
    (a user error) or 130 (interrupted) stops further launches; the running ones are waited for.
    """
    pending, free, running, codes = list(indices), list(slots), {}, {}
    stop = False
    try:
        while running or (pending and not stop):
            while pending and free and not stop:
                index, slot = pending.pop(0), free.pop(0)
                running[index] = (launch(index, slot), slot)
            for index, (proc, slot) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                codes[index] = code
                free.append(slot)
                del running[index]
                stop = stop or code in (2, EXIT_INTERRUPTED)
                if on_done is not None:
                    on_done(index, code)
            if running:
                sleep(poll_s)
    except KeyboardInterrupt:
        for index, (proc, _) in running.items():
            codes[index] = proc.wait()  # the children got the same Ctrl-C and save a checkpoint
        raise SweepInterrupted("interrupted") from None
    return codes


def run_parallel(sweep, indices, gpus, args):
    """Run ``indices`` of ``sweep`` in subprocesses, one per entry of ``gpus``; returns ``{index: code}``."""
    folder = sweep_dir(sweep["dim"], sweep["sweep"])
    (folder / "logs").mkdir(exist_ok=True)
    bar = tqdm(total=len(indices), desc=f"sweep {sweep['dim']}d/{sweep['sweep']} on {len(gpus)} processes",
               unit="point", dynamic_ncols=True)

    def launch(index, gpu):
        log = open(folder / "logs" / f"point{index}.log", "a")
        cmd = [sys.executable, str(xp.REPO_ROOT / "sweep.py"), *point_command(sweep, index, gpu, args)[1:]]
        tqdm.write(f"point {index} ({describe(sweep['points'][index]['params'])}) on gpu {gpu}: log in "
                   f"{folder / 'logs' / f'point{index}.log'}")
        # The workers run in the repository: a relative experiments folder must mean what it means here.
        env = {**os.environ, "FNOREG_EXPERIMENTS_DIR": str(xp.experiments_root(sweep["dim"]).parent.resolve())}
        proc = subprocess.Popen(cmd, cwd=xp.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return proc

    def done(index, code):
        bar.update(1)
        if code:
            tqdm.write(f"point {index} exited with status {code}; see {folder / 'logs' / f'point{index}.log'}")

    try:
        return schedule(indices, gpus, launch, done)
    finally:
        bar.close()


def collect(sweep, takeover=False):
    """Current state of every point; records of points that are done are refreshed. ``{index: record}``."""
    folder = sweep_dir(sweep["dim"], sweep["sweep"])
    records = {}
    for point in sweep["points"]:
        k = point["index"]
        state = point_state(sweep, k, takeover)
        record = read_record(folder, k)
        if state["status"] == "done":
            metrics = metrics_of(state["summary"])
            if record.get("metrics") != metrics or record.get("exp_num") != state["exp_num"] or \
                    record.get("status") != "done":
                record = write_record(folder, k, params=point["params"], dim=sweep["dim"], exp_num=state["exp_num"],
                                      status="done", metrics=metrics)
        else:
            record = {**record, "exp_num": state["exp_num"], "status": state["status"], "detail": state["detail"]}
            record.pop("metrics", None)
        records[k] = record
    return records


def execute(sweep, args):
    """Run (or print the commands of) the unfinished points of ``sweep``, then collect and report.

    Returns
    -------
    code : int
        0, or 130 when interrupted.
    rows : list of dict
        :func:`engine.sweep_report.result_rows`.
    best : dict or None
        The best row.
    complete : bool
        Every point is done or failed.
    """
    dim, number = sweep["dim"], sweep["sweep"]
    folder = sweep_dir(dim, number)
    states = {p["index"]: point_state(sweep, p["index"], args.takeover) for p in sweep["points"]}
    todo = [k for k, s in states.items() if s["status"] not in FINISHED + ("running",)]
    busy = [k for k, s in states.items() if s["status"] == "running"]
    code = 0
    if args.print_commands:
        if todo:
            print(f"# sweep {dim}d/{number}: {len(todo)} unfinished points; run each command from {xp.REPO_ROOT}")
            for k in todo:
                print(" ".join(["python", *point_command(sweep, k, args.gpu_num, args)]))
            print(f"# SLURM job array: #SBATCH --array={','.join(map(str, todo))} and\n#   python sweep.py --dim {dim} "
                  f"--sweep {number} --only_point $SLURM_ARRAY_TASK_ID --gpu_num 0\n"
                  "# then run the sweep command again to collect the results")
    elif todo:
        try:
            if args.gpus:
                run_parallel(sweep, todo, args.gpus, args)
            else:
                for n, k in enumerate(todo, 1):
                    print(f"sweep {dim}d/{number}: point {k} ({describe(sweep['points'][k]['params'])}), "
                          f"{n} of {len(todo)} to run: {states[k]['status']} {states[k]['detail']}".rstrip(),
                          file=sys.stderr)
                    try:
                        run_point(sweep, k, args.gpu_num, args.takeover, n_panels=args.n_panels)
                    except PointBusy as exc:
                        print(f"skipped: {exc}", file=sys.stderr)
        except (SweepInterrupted, KeyboardInterrupt):
            print(f"sweep {dim}d/{number} interrupted: run the same command again (or add --sweep {number}) to "
                  "resume it", file=sys.stderr)
            code = EXIT_INTERRUPTED
    records = collect(sweep, args.takeover)
    rows = result_rows(sweep, records)
    best = choose_best(rows, args.dice_tol, args.max_folding)
    table = write_reports(folder, sweep, rows, best)
    complete = all(r["status"] in FINISHED for r in rows)
    print(f"\n{sweep_title(sweep)} ({folder})\n{table}")
    if busy:
        print(f"still running elsewhere: points {', '.join(map(str, busy))}; run this command again to collect them")
    if best is not None:
        print(f"best: point {best['point']} ({describe(best['params'])}), experiment {best['exp_num']}, Dice "
              f"{best['dice_mean']:.4f}, folding {best['folding_percent_mean']:.3f}%")
    return code, rows, best, complete


def coordinate_descent(args):
    """Stage 1 over ``--stage1_param``, then stage 2 over ``--stage2_param`` with stage 1's best value."""
    missing = [f"--{n}" for n in ("stage1_param", "stage1_values", "stage2_param", "stage2_values")
               if getattr(args, n) is None]
    if missing:
        raise UserError(f"--mode coordinate needs {', '.join(missing)}")
    if args.param or args.values or args.sweep is not None or args.only_point is not None:
        raise UserError("--mode coordinate takes --stage1_/--stage2_ options, not --param/--values/--sweep/"
                        "--only_point (those address one sweep: use them without --mode coordinate)")
    p1, p2 = args.stage1_param, args.stage2_param
    overrides = parse_overrides(args.overrides)
    s1, note = open_sweep(args.dim, args.config_file, [p1], [args.stage1_values], overrides, args,
                          stage={"index": 1, "of": 2, "next": p2}, new=args.new)
    print(f"coordinate descent, stage 1 of 2: {note}", file=sys.stderr)
    code, rows1, best1, complete1 = execute(s1, args)
    if code or not complete1:
        if not code:
            print("stage 2 starts once every stage-1 point is finished: run this command again")
        return code
    if best1 is None:
        cap = " under --max_folding" if args.max_folding is not None else ""
        raise UserError(f"no stage-1 point qualifies as best (no validation Dice{cap}); see "
                        f"{sweep_dir(s1['dim'], s1['sweep']) / 'results.md'}")
    carried = {p1: best1["params"][p1]}
    dim2 = args.stage2_dim or args.dim
    stage2_overrides = {**overrides, **parse_overrides(args.stage2_set)}
    s2, note = open_sweep(dim2, args.stage2_config or args.config_file, [p2], [args.stage2_values], stage2_overrides,
                          args, fixed=carried, new=args.new,
                          stage={"index": 2, "of": 2, "carried": carried, "previous": {"dim": s1["dim"],
                                                                                      "sweep": s1["sweep"]}})
    print(f"coordinate descent, stage 2 of 2 with {describe(carried)} from stage 1: {note}", file=sys.stderr)
    code, rows2, best2, _ = execute(s2, args)
    folder = sweep_dir(dim2, s2["sweep"])
    if any(r["dice_mean"] is not None for r in rows2):
        save_coordinate_plot(folder / "coordinate.png", [(s1, rows1, best1), (s2, rows2, best2)])
    chosen = {**carried, p2: best2["params"][p2]} if best2 is not None else None
    text = [f"# Coordinate descent: {p1} then {p2}", "",
            f"## Stage 1: {sweep_title(s1)}", "", markdown_table(s1, rows1, best1), "",
            f"## Stage 2: {sweep_title(s2)}", "", markdown_table(s2, rows2, best2), "",
            f"Chosen: {describe(chosen) if chosen else 'none yet'} (best rule: highest validation Dice, "
            f"dice_tol {args.dice_tol}, max_folding {args.max_folding}; ties to lower folding)"]
    (folder / "coordinate.md").write_text("\n".join(text) + "\n")
    if chosen:
        print(f"coordinate descent chose {describe(chosen)}; both stages in {folder / 'coordinate.png'}")
    return code


def sweep_main(argv=None):
    """Entry point of ``sweep.py``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = sweep_parser().parse_args(argv)
    args.argv = argv
    if args.gpus and args.only_point is not None:
        raise UserError("--only_point runs one point in this process; drop --gpus (use --gpu_num)")
    if args.dice_tol < 0:
        raise UserError(f"--dice_tol must be non-negative, got {args.dice_tol}")
    for flag, value in (("--size", args.size), ("--eval_size", args.eval_size)):
        if value is not None and value < 2:  # 0 would never match an evaluation: the point would never finish
            raise UserError(f"{flag} must be at least 2 (the smallest image side), got {value}")
    if args.n_panels < 0:
        raise UserError(f"--n_panels must be non-negative, got {args.n_panels}")
    if args.mode == "coordinate":
        return coordinate_descent(args)
    if args.stage1_param or args.stage2_param:
        raise UserError("--stage1_/--stage2_ options need --mode coordinate")
    sweep, note = open_sweep(args.dim, args.config_file, args.param, args.values, parse_overrides(args.overrides),
                             args, number=args.sweep, new=args.new)
    if args.only_point is not None:
        if not 0 <= args.only_point < len(sweep["points"]):
            raise UserError(f"--only_point {args.only_point}: sweep {sweep['sweep']} has points 0 to "
                            f"{len(sweep['points']) - 1}")
        try:
            record = run_point(sweep, args.only_point, args.gpu_num, args.takeover, n_panels=args.n_panels)
        except SweepInterrupted as exc:
            print(f"{exc}; run the command again to resume it", file=sys.stderr)
            return EXIT_INTERRUPTED
        print(f"sweep {sweep['dim']}d/{sweep['sweep']} point {args.only_point}: {record['status']} "
              f"(experiment {record.get('exp_num')})")
        return 0
    print(note, file=sys.stderr)
    return execute(sweep, args)[0]


__all__ = ["collect", "coordinate_descent", "execute", "open_sweep", "point_command", "run_parallel", "schedule",
           "sweep_main", "sweep_parser"]
