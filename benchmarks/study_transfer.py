"""Resolution transfer without extra folding (issue 11): every FNOReg option, one table.

Each variant is ``configs/demo_2d.json`` (the README demo recipe: 600 steps of batch 8, lr 1e-3,
seed 0, phantoms) with every option off (the published model) and then the variant's change, trained at ``--train_sizes`` (default 80) and evaluated on the
test split at 80x96 and 160x192 through the real pipeline (``engine.training.train_main``,
``engine.evaluation.evaluate_experiment``); ``--refine K`` adds rows for per-pair refinement of
the variants named by ``--refine_variants``.

    python benchmarks/study_transfer.py                       # about 25 min on a 2-core CPU
    python benchmarks/study_transfer.py --variants published band_limit --train_sizes 80 160

Outputs: ``<out>/transfer.json`` (every summary) and ``<out>/transfer.md`` (the table).
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_resolution import experiments_dir, train_run  # noqa: E402
from utils.errors import EXIT_INTERRUPTED  # noqa: E402
from benchmarks.common import command_line, finish_machine_info, machine_info, machine_line, set_threads  # noqa: E402
from engine.evaluation import evaluate_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: name -> (section, changes) applied to configs/demo_2d.json.
VARIANTS = {
    "published": {},
    "band_limit": {"model_config": {"band_limit": True}},
    "diffeomorphic": {"model_config": {"diffeomorphic": True}},
    "jac_param 1": {"train_config": {"jac_param": 1.0}},
    "multires 64-160": {"train_config": {"multires": {"min_size": 64, "max_size": 160}, "size": None}},
    "band_limit + diffeomorphic": {"model_config": {"band_limit": True, "diffeomorphic": True}},
    "band_limit + jac_param 1": {"model_config": {"band_limit": True}, "train_config": {"jac_param": 1.0}},
    "ffc_fft_norm forward + band_limit": {"model_config": {"band_limit": True, "ffc_fft_norm": "forward"}},
    "fold_repair": {"model_config": {"fold_repair": True}},
    "diffeomorphic + fold_repair": {"model_config": {"diffeomorphic": True, "fold_repair": True}},
}


def variant_config(base, changes, train_size):
    cfg = json.loads(json.dumps(base))
    # The study's baseline is the published recipe: every option off unless the variant sets it.
    cfg["model_config"].update(band_limit=False, diffeomorphic=False, fold_repair=False)
    for section, values in changes.items():
        cfg[section].update(values)
    if not cfg["train_config"].get("multires"):
        cfg["train_config"]["size"] = train_size
    cfg["description"] = "study_transfer"
    return cfg


def run(name, changes, train_size, work, eval_sizes, refine, progress):
    """Train one variant at ``train_size`` and evaluate it; returns its summaries."""
    root = work / f"{name.replace(' ', '_').replace('+', 'and')}_train{train_size}"
    shutil.rmtree(root, ignore_errors=True)  # experiment 1 of a fresh root is this run
    root.mkdir(parents=True)
    base = json.loads((REPO / "configs" / "demo_2d.json").read_text())
    path = root / "config.json"
    path.write_text(json.dumps(variant_config(base, changes, train_size), indent=2))
    status, train_s = train_run(path, root, -1, isolate=False, verbose=progress)
    if status == EXIT_INTERRUPTED:  # Ctrl-C or SIGTERM: stop the study, not only this run
        sys.exit(EXIT_INTERRUPTED)
    if status:
        raise RuntimeError(f"training {name} failed (exit {status})")
    out = {"train_s": train_s, "eval": {}}
    with experiments_dir(root):
        for k in sorted({0, *refine}):
            for s in evaluate_experiment(2, 1, sizes=eval_sizes, gpu_num=-1, progress=progress, n_panels=0, refine=k):
                out["eval"][f"{s['eval_size']}_refine{k}"] = s
    return out


def table(results, eval_sizes):
    low, high = eval_sizes
    head = ["variant", "trained at", "refine K", f"Dice {low}", f"Dice {high}", f"folding % {low}",
            f"folding % {high}", f"SDlogJ {low}", f"SDlogJ {high}", f"HD95 {high}", f"ms/pair {high}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (name, size), res in results.items():
        if res is None:
            continue
        ks = sorted({int(key.split("refine")[1]) for key in res["eval"]})
        for k in ks:
            a, b = res["eval"][f"{low}_refine{k}"], res["eval"][f"{high}_refine{k}"]
            trained = "64-160" if "multires" in name else str(size)
            lines.append(f"| {name} | {trained} | {k} | {a['dice_mean']:.3f} | {b['dice_mean']:.3f} | "
                         f"{a['folding_percent_mean']:.2f} | {b['folding_percent_mean']:.2f} | {a['sdlogj_mean']:.3f} | "
                         f"{b['sdlogj_mean']:.3f} | {b['hd95_mean']:.2f} | {1000 * b['time_per_pair_s']:.1f} |")
    first = next(iter(results.values()))
    if first is not None:
        s = first["eval"][f"{low}_refine0"]
        lines.append(f"| before registration | | | {s['initial_dice_mean']:.3f} | "
                     f"{first['eval'][f'{high}_refine0']['initial_dice_mean']:.3f} | | | | | | |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--train_sizes", nargs="+", type=int, default=[80])
    p.add_argument("--eval_sizes", nargs=2, type=int, default=[80, 160])
    p.add_argument("--refine", nargs="*", type=int, default=[], help="refinement steps K to add (0 always runs)")
    p.add_argument("--refine_variants", nargs="*", default=["published"])
    p.add_argument("--threads", type=int)
    p.add_argument("--work", default=str(REPO / "experiments" / "study_transfer"))
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    set_threads(args.threads)
    info = machine_info(device="cpu")
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for size in args.train_sizes:
        for name in args.variants:
            refine = args.refine if name in args.refine_variants else []
            print(f"[study] {name}, trained at {size}", file=sys.stderr, flush=True)
            results[(name, size)] = run(name, VARIANTS[name], size, work, args.eval_sizes, refine, args.verbose)
            (out / "transfer.json").write_text(json.dumps(
                {"machine": info, "results": {f"{n} @ {s}": r for (n, s), r in results.items()}}, indent=1,
                default=str))
    finish_machine_info(info)
    text = (f"# Resolution transfer study (issue 11)\n\n{machine_line(info)}\n\n"
            f"Command: `{command_line('study_transfer.py')}`\n\n"
            + table(results, args.eval_sizes) + "\n")
    (out / "transfer.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
