"""The speed targets of issue 12, measured interleaved in one process: met or not, with the figures.

    python benchmarks/bench_targets.py [--threads 2] [--rounds 7] [--repeats 5] [--out DIR]

``bench_speed.py`` times every model one cell after another, minutes apart; on a shared machine
whose speed drifts by tens of per cent, two cells timed minutes apart cannot settle "faster than".
Here the cells the targets compare run in turn within each of ``--rounds`` rounds (``--repeats``
calls each; a training cell times ``--repeats`` full steps), so a drift hits all of them alike.
Each cell's figure is the median over all its calls, and the spread is the range of its
per-round medians; a target counts as met only when it holds for the overall median *and* in
every round.

Cells (2D, on the CPU):

- FNOReg small training throughput at 80x96, batch 8 (the preset as published, as in
  ``bench_speed.py``; and the configs' default, ``"diffeomorphic": true``), VoxelMorph vxm2's for
  reference: a full step as ``bench_speed.py`` runs it (forward, warp, loss, backward, Adam);
- FNOReg large and small inference at 160x192, batch 1 (forward + warp, spectral weights cached,
  as an evaluation runs it) and VoxelMorph vxm2's;
- the floor of FNOReg large (``bench_floor.py``'s sum of its essential kernels, each the median of
  ``--floor_repeats`` calls), timed in every round too: the ratio of each round compares the
  model and the floor of the same minutes, and the overall ratio is the model's median over the
  median of the rounds' floors.

Targets: small training >= 100 pairs/s; large inference < 60 ms per pair and within 1.5x of its
floor; small inference faster than vxm2's (the ratio of medians < 1, and < 1 in every round).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_floor import floor_table  # noqa: E402
from benchmarks.bench_speed import inference_fn, training_fn  # noqa: E402
from benchmarks.common import (  # noqa: E402
    command_line,
    Entry,
    build,
    finish_machine_info,
    machine_info,
    machine_line,
    make_entry,
    markdown_table,
    set_threads,
    write_outputs,
)

SMALL, FULL = (80, 96), (160, 192)


def cells(train_shape=SMALL, infer_shape=FULL):
    """(name, mode, entry, shape) of every timed cell, in the order each round runs them."""
    small, large, vxm2 = make_entry("fnoreg", "small"), make_entry("fnoreg", "large"), make_entry("voxelmorph", "vxm2")
    diffeo = Entry("fnoreg/small diffeomorphic", "fnoreg", {"preset": "small", "diffeomorphic": True},
                   small.dims, small.train_config, small.config_file)
    return [
        ("fnoreg/small training", "training", small, train_shape),
        ("fnoreg/small diffeomorphic training", "training", diffeo, train_shape),
        ("voxelmorph/vxm2 training", "training", vxm2, train_shape),
        ("fnoreg/large inference", "inference", large, infer_shape),
        ("fnoreg/small inference", "inference", small, infer_shape),
        ("voxelmorph/vxm2 inference", "inference", vxm2, infer_shape),
    ]


def run_rounds(specs, rounds, repeats, floor=None, progress=True):
    """Per cell: batch and the list of per-round lists of call times (seconds).

    ``floor``, a zero-argument function returning seconds, is called once per round, after the
    cells; its values are returned under the key ``"floor"``.
    """
    prepared = []
    for name, mode, entry, shape in specs:
        torch.manual_seed(0)
        model = build(entry, 2, "cpu")
        if mode == "training":
            fn, batch, _ = training_fn(model.train(), entry, 2, shape, "cpu")
        else:
            fn, batch = inference_fn(model.eval(), shape, "cpu"), 1
        for _ in range(2):  # warm-up: allocations, Adam state, the weight cache
            fn()
        prepared.append((name, mode, model, fn, batch))
    times = {name: [] for name, *_ in prepared}
    floors = []
    for r in range(rounds):
        for name, _, _, fn, _ in prepared:
            round_times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                round_times.append(time.perf_counter() - start)
            times[name].append(round_times)
        if floor is not None:
            floors.append(floor())
        if progress:
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    out = {name: {"mode": mode, "batch": batch, "rounds": times[name], "model": model}
           for name, mode, model, _, batch in prepared}
    return out, floors


def summarise(name, cell):
    """Median seconds per call overall and per round, and pairs per second."""
    flat = [t for r in cell["rounds"] for t in r]
    per_round = [statistics.median(r) for r in cell["rounds"]]
    median = statistics.median(flat)
    return {"name": name, "mode": cell["mode"], "batch": cell["batch"], "median_s": median,
            "round_medians_s": per_round, "min_s": min(flat), "pairs_per_s": cell["batch"] / median,
            "round_pairs_per_s": [cell["batch"] / m for m in per_round]}


def targets(summary, floors, train_shape=SMALL, infer_shape=FULL):
    """Rows (target, figure, met overall, met in every round) for the issue's four targets.

    ``floors``: FNOReg large's floor in each round (seconds).
    """
    floor_s = statistics.median(floors)
    tr, inf = "x".join(map(str, train_shape)), "x".join(map(str, infer_shape))
    s = {row["name"]: row for row in summary}
    train = s["fnoreg/small training"]
    large = s["fnoreg/large inference"]
    small, vxm = s["fnoreg/small inference"], s["voxelmorph/vxm2 inference"]
    ratios = [a / b for a, b in zip(small["round_medians_s"], vxm["round_medians_s"])]
    floor_ratios = [m / f for m, f in zip(large["round_medians_s"], floors)]
    rows = [
        (f"FNOReg small training, {tr}, batch {train['batch']}: >= 100 pairs/s",
         f"{train['pairs_per_s']:.1f} pairs/s (rounds {min(train['round_pairs_per_s']):.1f}-"
         f"{max(train['round_pairs_per_s']):.1f})",
         train["pairs_per_s"] >= 100, min(train["round_pairs_per_s"]) >= 100),
        (f"FNOReg large inference, {inf}: < 60 ms",
         f"{1000 * large['median_s']:.1f} ms (rounds {1000 * min(large['round_medians_s']):.1f}-"
         f"{1000 * max(large['round_medians_s']):.1f})",
         large["median_s"] < 0.060, max(large["round_medians_s"]) < 0.060),
        ("FNOReg large inference within 1.5x of its kernels' floor",
         f"{large['median_s'] / floor_s:.2f}x ({1000 * large['median_s']:.1f} ms against {1000 * floor_s:.1f} ms; "
         f"rounds {min(floor_ratios):.2f}-{max(floor_ratios):.2f}x)",
         large["median_s"] <= 1.5 * floor_s, max(floor_ratios) <= 1.5),
        (f"FNOReg small inference, {inf}: faster than VoxelMorph vxm2",
         f"{1000 * small['median_s']:.1f} ms against {1000 * vxm['median_s']:.1f} ms, ratio "
         f"{small['median_s'] / vxm['median_s']:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f})",
         small["median_s"] < vxm["median_s"], max(ratios) < 1),
    ]
    return rows


def markdown(result):
    yes = {True: "yes", False: "**no**"}
    lines = ["# Issue 12's speed targets, interleaved", "", machine_line(result["machine"]), "",
             f"Command: `{result['command']}`", "",
             f"{result['settings']['rounds']} rounds; in each, every cell runs {result['settings']['repeats']} "
             "call(s) in turn. Figure: median over all calls (range: the rounds' medians).", "",
             markdown_table(["target", "measured", "met", "met in every round"],
                            [(t, f, yes[a], yes[b]) for t, f, a, b in result["targets"]]), "",
             markdown_table(["cell", "batch", "median", "min", "pairs/s", "round medians"],
                            [(r["name"], r["batch"], f"{1000 * r['median_s']:.1f} ms", f"{1000 * r['min_s']:.1f} ms",
                              f"{r['pairs_per_s']:.1f}",
                              ", ".join(f"{1000 * m:.1f}" for m in r["round_medians_s"]))
                             for r in result["cells"]]), "",
             f"FNOReg large's floor at {'x'.join(map(str, result['settings']['infer_shape']))} "
             f"(`bench_floor.py`'s kernels), per round: "
             + ", ".join(f"{1000 * f:.1f}" for f in result["floors_s"]) + " ms."]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--floor_repeats", type=int, default=5, help="calls per kernel per round for the floor")
    p.add_argument("--train_shape", type=int, nargs=2, default=list(SMALL))
    p.add_argument("--infer_shape", type=int, nargs=2, default=list(FULL))
    p.add_argument("--out", help="write targets.json and targets.md here")
    args = p.parse_args(argv)
    set_threads(args.threads)
    info = machine_info("cpu")
    floor_model = build(make_entry("fnoreg", "large"), 2, "cpu").eval()

    def floor():
        with torch.inference_mode():
            return sum(n * s for _, n, s in floor_table(floor_model, tuple(args.infer_shape), args.floor_repeats))

    results, floors = run_rounds(cells(tuple(args.train_shape), tuple(args.infer_shape)), args.rounds, args.repeats,
                                 floor)
    finish_machine_info(info)
    summary = [summarise(name, cell) for name, cell in results.items()]
    result = {"machine": info, "command": command_line("bench_targets.py", argv), "settings": vars(args),
              "cells": summary, "floor_s": statistics.median(floors), "floors_s": floors,
              "targets": targets(summary, floors, args.train_shape, args.infer_shape)}
    text = markdown(result)
    print(text)
    if args.out:
        write_outputs(args.out, "targets", result, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
