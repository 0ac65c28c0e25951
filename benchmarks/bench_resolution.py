"""Resolution robustness, the paper's claim, as one command.

Each model is trained at half (80x96) and at full (160x192) resolution with the same number of
training pairs (steps x batch), and every run is evaluated on the test split at both sizes:

    python benchmarks/bench_resolution.py                 # phantoms, about 30 min on a 2-core CPU
    python benchmarks/bench_resolution.py --data PATH     # any neurite-layout folder (2D)
    python benchmarks/bench_resolution.py --full --gpu_num 0 --data PATH   # published budget, a GPU

Models: FNOReg small, plain FNO small, VoxelMorph vxm2 and Fourier-Net 16 (``--models`` picks
others by ``name/preset``); variants join with ``--configs LABEL=path.json`` (the file's
``model_name``, ``model_config`` and loss settings of its ``train_config``) or ``--variant
'LABEL:{"model_name": "fnoreg", "model_config": {"preset": "small", "band_limit": true}}'``. The
budget (batch, steps, learning rate, seed) is the benchmark's, never the variant's, so every
run sees the same pairs.

Runs go through the real pipeline: ``engine.training.train_main`` (the code of ``train_2d.py``)
with a generated config, then ``engine.evaluation.evaluate_experiment`` (``evaluate_2d.py``) at
both sizes, each run in its own experiments root ``<work>/<label>_train<size>/`` (set through
``FNOREG_EXPERIMENTS_DIR``; default work folder ``experiments/bench_resolution/``, replaced at
each start unless ``--keep``). ``--isolate`` runs the entry scripts as subprocesses instead.

The table per model: Dice and folding % at (trained 80, tested 80), (80, 160), (160, 80),
(160, 160), and the **Dice drop** = Dice(trained 160, tested 160) - Dice(trained 80, tested 160):
what training at half resolution costs at full resolution (small or negative is the claim).
SDlogJ and HD95 are in the JSON and a second table.

ANTs: when ``antspyx`` is importable (an optional extra, never a requirement) the same test
pairs are registered with ANTs SyN and SyNCC (``--ants_transforms``) at both sizes, scored the
same way (Dice and HD95 on the native label maps, folding and SDlogJ of the field on the grid it
was computed on) with the time per pair; ``--ants off`` skips it.

Outputs in ``--out``: ``resolution.json`` (machine, budget, every run's summaries) and
``resolution.md``.
"""

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ants_reference import ants_register_split, import_ants  # noqa: E402
from benchmarks.common import (  # noqa: E402
    CONFIG_DIR,
    REPO,
    command_line,
    finish_machine_info,
    machine_info,
    set_threads,
    shape_text,
)
from benchmarks.resolution_report import dice_drop, resolution_markdown  # noqa: E402
from utils.errors import EXIT_INTERRUPTED  # noqa: E402

DEFAULT_MODELS = ("fnoreg/small", "fno/small", "voxelmorph/vxm2", "fouriernet/c16")
CONFIG_FILES = {"fnoreg/small": "fnoreg_2d_small.json", "fno/small": "fno_2d_small.json",
                "voxelmorph/vxm2": "voxelmorph_2d_vxm2.json", "fouriernet/c16": "fouriernet_2d_16.json"}
# The budgets. "cpu": about 30 minutes on a 2-core CPU with phantoms for the 8 runs and their
# evaluations (measured per-step costs in benchmarks/README.md); "full": the published 2D protocol.
BUDGETS = {
    "cpu": {"batch_size": 8, "epochs": 6, "steps_per_epoch": 50, "lr": 1e-3},
    "full": {"batch_size": 8, "epochs": 80, "steps_per_epoch": None, "lr": 1e-4},
}
# multires would override size (the two training sizes would be one run): the budget owns it too.
BUDGET_KEYS = ("batch_size", "epochs", "steps_per_epoch", "lr", "seed", "size", "ckpt_freq", "val_freq",
               "image_log_freq", "lr_schedule", "val_batch_size", "multires")
PHANTOM = {"n_subjects": 64, "shape": [160, 192], "seed": 0}


# ------------------------------------------------------------------------------------- runs
def _read(path):
    with open(path) as f:
        return json.load(f)


def model_runs(models, config_args=(), variants=()):
    """``[(label, {"model_name", "model_config", "train_config"})]``: the models, then the variants.

    A ``name/preset`` model is the published network, the bare preset, whatever its config file
    adds (``configs/fnoreg_2d_small.json`` turns on this project's ``diffeomorphic`` and
    ``fold_repair``: post-processing that zeroes folding, which no baseline gets); the config
    file gives only its training settings. A shipped config as it is: ``--configs``.
    """
    out = []
    for name in models:
        model_name, _, preset = name.partition("/")
        model = {"model_name": model_name, "model_config": {"preset": preset} if preset else {}}
        path = CONFIG_DIR / CONFIG_FILES[name] if name in CONFIG_FILES else None
        if path is not None and path.is_file():
            model["train_config"] = _read(path).get("train_config", {})
        out.append((name, model))
    for item in config_args:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).stem, item
        cfg = _read(path)
        out.append((label, {k: cfg[k] for k in ("model_name", "model_config", "train_config") if k in cfg}))
    for item in variants:
        label, sep, text = item.partition(":")
        if not sep:
            raise SystemExit(f"error: --variant wants LABEL:JSON, got {item!r}")
        try:
            cfg = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"error: --variant {label}: not JSON ({exc})") from None
        if "model_name" not in cfg:
            raise SystemExit(f"error: --variant {label}: the JSON needs a model_name")
        out.append((label, cfg))
    labels = [label for label, _ in out]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"error: labels must be distinct, got {labels}")
    return out


def data_config(args):
    if args.data:
        root = Path(args.data).expanduser()
        if not (root / "subjects.txt").is_file():
            raise SystemExit(f"error: --data {root} has no subjects.txt (a neurite-layout folder is needed)")
        cfg = {"dataset": "oasis", "root": str(root), "label_scheme": args.label_scheme or "seg24"}
    else:
        phantom = dict(PHANTOM)
        if args.phantom_subjects:
            phantom["n_subjects"] = args.phantom_subjects
        if args.phantom_shape:
            phantom["shape"] = list(args.phantom_shape)
        cfg = {"dataset": "phantom", "phantom": phantom}
        if args.label_scheme:
            cfg["label_scheme"] = args.label_scheme
    if args.test_subjects is not None or args.train_subjects is not None:
        n = cfg.get("phantom", {}).get("n_subjects") if not args.data else None
        if n is None and args.data:
            n = sum(1 for line in (Path(cfg["root"]) / "subjects.txt").read_text().splitlines() if line.strip())
        cfg["splits"] = _splits(n, args.train_subjects, args.test_subjects)
    return cfg


def _splits(n, train, test):
    """Explicit splits: ``train`` subjects first, 2 validation subjects, ``test`` subjects last."""
    test = test or max(2, n // 4)
    train = train or max(2, n - test - 2)
    if train + test + 2 > n:
        raise SystemExit(f"error: {train} training + 2 validation + {test} test subjects need {train + test + 2} "
                         f"subjects, the data has {n}")
    return {"train": [0, train - 1], "val": [train, train + 1], "test": [n - test, n - 1]}


def run_config(label, model, size, budget, data_cfg, seed):
    """The generated config of one training run."""
    tc = {k: v for k, v in model.get("train_config", {}).items() if k not in BUDGET_KEYS}
    tc.update({k: v for k, v in budget.items()})
    tc.update({"size": size, "seed": seed, "ckpt_freq": budget["epochs"], "val_freq": budget["epochs"],
               "image_log_freq": budget["epochs"]})
    return {"description": f"bench_resolution: {label} trained at size {size}", "dim": 2,
            "model_name": model["model_name"], "model_config": model.get("model_config", {}),
            "train_config": tc, "data_config": data_cfg}


@contextlib.contextmanager
def experiments_dir(path):
    old = os.environ.get("FNOREG_EXPERIMENTS_DIR")
    os.environ["FNOREG_EXPERIMENTS_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FNOREG_EXPERIMENTS_DIR", None)
        else:
            os.environ["FNOREG_EXPERIMENTS_DIR"] = old


def _quiet():
    return contextlib.redirect_stdout(open(os.devnull, "w"))


def _child_env(root):
    env = dict(os.environ, FNOREG_EXPERIMENTS_DIR=str(root))
    threads = os.environ.get("FNOREG_BENCH_THREADS")
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def train_run(config_path, root, gpu_num, isolate, verbose=False):
    """Train one run into the experiments root ``root``; returns (exit status, wall seconds)."""
    started = time.perf_counter()
    argv = ["--config_file", str(config_path), "--gpu_num", str(gpu_num)]
    if isolate:
        env = _child_env(root)
        proc = subprocess.run([sys.executable, str(REPO / "train_2d.py"), *argv], cwd=str(REPO), env=env,
                              capture_output=not verbose, text=True)
        if proc.returncode and not verbose:
            sys.stderr.write(proc.stderr[-3000:])
        return proc.returncode, time.perf_counter() - started
    from engine.training import train_main

    with experiments_dir(root), (contextlib.nullcontext() if verbose else _quiet()):
        status = train_main(2, argv)
    return int(status or 0), time.perf_counter() - started


def evaluate_run(root, sizes, gpu_num, isolate, verbose=False):
    """Evaluate experiment 1 of ``root`` at ``sizes``; returns {size: summary} read from summary.json."""
    exp = root / "2d" / "exp1"
    if isolate:
        env = _child_env(root)
        cmd = [sys.executable, str(REPO / "evaluate_2d.py"), "--exp_num", "1", "--gpu_num", str(gpu_num),
               "--size", *map(str, sizes), "--n_panels", "0"]
        proc = subprocess.run(cmd, cwd=str(REPO), env=env, capture_output=not verbose, text=True)
        if proc.returncode:
            raise RuntimeError(f"evaluation of {exp} failed (exit {proc.returncode}): {(proc.stderr or '')[-2000:]}")
    else:
        from engine.evaluation import evaluate_experiment

        with experiments_dir(root), (contextlib.nullcontext() if verbose else _quiet()):
            evaluate_experiment(2, 1, sizes=list(sizes), gpu_num=gpu_num, n_panels=0, progress=verbose)
    return find_summaries(exp, sizes)


def find_summaries(exp_folder, sizes):
    """{size: summary} of the final-weights, test-split evaluations under ``exp_folder/eval``.

    Tolerant to the folder naming (``final_160``, ``final_160_<tag>``, ...): the summaries are
    matched by their own ``eval_size``, ``split`` and ``checkpoint`` entries, the newest winning.
    """
    found = {}
    for path in sorted(Path(exp_folder, "eval").glob("*/summary.json"), key=lambda p: p.stat().st_mtime):
        s = _read(path)
        if s.get("split", "test") != "test" or s.get("checkpoint", "final") != "final":
            continue
        size = s.get("eval_size")
        if size in sizes:
            s["summary_path"] = str(path)
            found[size] = s
    return found


def parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu_num", type=int, default=-1, help="cuda:K, or -1 for the CPU (default)")
    p.add_argument("--data", help="a neurite-layout folder (subjects.txt, <subject>/slice_norm.nii.gz, ...); "
                   "default: the project's 2D phantoms")
    p.add_argument("--label_scheme", help="data_config.label_scheme (default seg24)")
    p.add_argument("--full", action="store_true", help="the published budget (80 epochs over all training pairs, "
                   "lr 1e-4, batch 8): for a GPU")
    p.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS),
                   help="name/preset of each model (none: only --configs / --variant runs)")
    p.add_argument("--configs", nargs="+", default=[], metavar="LABEL=PATH", help="extra runs from config files")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL:JSON",
                   help='an extra run, e.g. \'fnoreg-bl:{"model_name": "fnoreg", "model_config": '
                   '{"preset": "small", "band_limit": true}}\' (repeatable)')
    p.add_argument("--sizes", type=int, nargs=2, default=[80, 160], metavar=("LOW", "HIGH"),
                   help="training and test sizes (smallest side)")
    p.add_argument("--steps", type=int, help="steps per epoch (overrides the budget)")
    p.add_argument("--epochs", type=int, help="epochs (overrides the budget)")
    p.add_argument("--batch_size", type=int, help="pairs per step (overrides the budget)")
    p.add_argument("--lr", type=float, help="learning rate (overrides the budget)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phantom_subjects", type=int, help=f"phantom subjects (default {PHANTOM['n_subjects']})")
    p.add_argument("--phantom_shape", type=int, nargs=2, help="phantom native shape (default 160 192)")
    p.add_argument("--train_subjects", type=int, help="explicit split: first N subjects train")
    p.add_argument("--test_subjects", type=int, help="explicit split: last N subjects test")
    p.add_argument("--ants", choices=("auto", "off"), default="auto",
                   help="register the test pairs with ANTs when antspyx is installed (default auto)")
    p.add_argument("--ants_transforms", nargs="+", default=["SyN", "SyNCC"])
    p.add_argument("--ants_pairs", type=int, help="register only the first N test pairs with ANTs")
    p.add_argument("--threads", type=int, help="torch CPU threads (also ITK's for ANTs)")
    p.add_argument("--work", default=str(REPO / "experiments" / "bench_resolution"),
                   help="folder of the runs' experiment roots (replaced at start unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep --work's earlier runs (new runs still replace theirs)")
    p.add_argument("--isolate", action="store_true", help="run train_2d.py / evaluate_2d.py as subprocesses")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--verbose", action="store_true", help="show the training and evaluation output")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    set_threads(args.threads)
    if args.threads:
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
        os.environ["FNOREG_BENCH_THREADS"] = str(args.threads)
    low, high = sorted(args.sizes)
    budget = dict(BUDGETS["full" if args.full else "cpu"])
    for key, value in (("steps_per_epoch", args.steps), ("epochs", args.epochs), ("batch_size", args.batch_size),
                       ("lr", args.lr)):
        if value is not None:
            budget[key] = value
    data_cfg = data_config(args)
    models = model_runs(args.models, args.configs, args.variant)
    work = Path(args.work)
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(f"cuda:{args.gpu_num}" if args.gpu_num >= 0 and torch.cuda.is_available() else "cpu")
    info = machine_info(device)

    from data.resize import shape_for_size

    native = tuple(data_cfg.get("phantom", {}).get("shape", ())) or None
    result = {"benchmark": "resolution", "machine": info,
              "command": command_line("bench_resolution.py", argv),
              "sizes": [low, high], "budget": budget, "data_config": data_cfg, "work": str(work), "models": {}}
    steps = budget["steps_per_epoch"]
    result["budget_description"] = (
        f"{budget['epochs']} epochs x {steps} steps x batch {budget['batch_size']} = "
        f"{budget['epochs'] * steps * budget['batch_size']:,} training pairs per run" if steps else
        f"{budget['epochs']} epochs over all training pairs, batch {budget['batch_size']}") + \
        f", lr {budget['lr']:g}, Adam, seed {args.seed}"
    result["data_description"] = (f"neurite-layout folder {data_cfg['root']}" if args.data else
                                  f"2D phantoms ({data_cfg['phantom']['n_subjects']} subjects, "
                                  f"{shape_text(data_cfg['phantom']['shape'])})")
    started = time.perf_counter()
    for label, model in models:
        entry = {"model_name": model["model_name"], "model_config": model.get("model_config", {}), "runs": {}}
        result["models"][label] = entry
        for size in (low, high):
            safe = "".join(ch if ch.isalnum() or ch in "-." else "-" for ch in label)
            root = work / f"{safe}_train{size}"
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            config = run_config(label, model, size, budget, data_cfg, args.seed)
            config_path = root / "config.json"
            config_path.write_text(json.dumps(config, indent=2))
            run = {"experiment": str(root / "2d" / "exp1"), "config": config}
            print(f"[{time.perf_counter() - started:6.0f} s] {label}: training at size {size}", file=sys.stderr, flush=True)
            try:
                status, seconds = train_run(config_path, root, args.gpu_num, args.isolate, args.verbose)
                run["train_seconds"] = seconds
                if status == EXIT_INTERRUPTED:  # Ctrl-C or SIGTERM stopped the run: stop the benchmark too
                    print(f"interrupted during {label} at size {size}; nothing written to {args.out}", file=sys.stderr)
                    sys.exit(EXIT_INTERRUPTED)
                if status:
                    raise RuntimeError(f"training exited with status {status}")
                meta_path = root / "2d" / "exp1" / "metadata.json"
                if meta_path.is_file():
                    meta = _read(meta_path)
                    run["n_params"] = meta.get("n_params")
                    run["train_shape"] = meta.get("train_size")
                print(f"[{time.perf_counter() - started:6.0f} s] {label}: evaluating at {low} and {high}",
                      file=sys.stderr, flush=True)
                summaries = evaluate_run(root, (low, high), args.gpu_num, args.isolate, args.verbose)
                run["eval"] = {str(k): v for k, v in summaries.items()}
            except SystemExit as exc:  # the engine's one-line errors (e.g. a size the model refuses)
                if exc.code == EXIT_INTERRUPTED:
                    raise
                run["error"] = f"error ({exc})"
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                if "cannot run at" in str(exc):
                    run["error"] = "cannot run at this size"
                else:
                    run["error"] = f"error: {type(exc).__name__}: {str(exc)[:200]}"
                print(f"  {label} size {size}: {run['error']}", file=sys.stderr)
            entry["runs"][str(size)] = run
        entry["dice_drop"] = dice_drop({int(k): {"eval": {int(s): v for s, v in r.get("eval", {}).items()}}
                                        for k, r in entry["runs"].items()}, low, high)

    # Shapes and the Dice before registration (the same pairs for every run).
    shapes, before = {}, {}
    for model in result["models"].values():
        for run in model["runs"].values():
            for size, s in run.get("eval", {}).items():
                shapes.setdefault(size, shape_text(s["eval_shape"]))
                before.setdefault(size, s.get("initial_dice_mean"))
    for size in (low, high):
        if str(size) not in shapes:
            shapes[str(size)] = shape_text(shape_for_size(size, native)) if native else str(size)
    result["shapes"], result["before"] = shapes, before

    ants = import_ants() if args.ants == "auto" else None
    if ants is not None:
        print(f"[{time.perf_counter() - started:6.0f} s] ANTs: {', '.join(args.ants_transforms)}", file=sys.stderr)
        result["ants"] = {t: {str(k): v for k, v in per.items()} for t, per in
                          ants_register_split(ants, data_cfg, (low, high), args.ants_transforms, args.ants_pairs,
                                              progress=args.verbose).items()}
        result["ants_note"] = (f"ANTs: antspyx {getattr(ants, '__version__', '?')}, `ants.registration` with its "
                               f"defaults per transform, images at the test size, transforms applied to the native "
                               f"label maps (nearest neighbour)" +
                               (f", first {args.ants_pairs} test pairs" if args.ants_pairs else "") + ".")
    else:
        result["ants_note"] = ("ANTs rows absent: antspyx is not installed (optional: `pip install antspyx`)."
                               if args.ants == "auto" else "ANTs skipped (--ants off).")
    result["wall_time_s"] = time.perf_counter() - started
    finish_machine_info(info)
    json_path, md_path = _write(args.out, result)
    print(md_path.read_text())
    print(f"wrote {json_path}, {md_path}", file=sys.stderr)
    return result


def _write(out, result):
    from benchmarks.common import write_outputs

    return write_outputs(out, "resolution", result, resolution_markdown(result))


if __name__ == "__main__":
    main()
