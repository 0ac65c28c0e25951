"""A sweep's results: the best point, the table (CSV and markdown) and the Figure-3-style plots.

The best point (the value a coordinate-descent sweep carries into its next stage) is chosen among
the evaluated points, in this order:

1. with ``max_folding``, only points whose mean folding percentage is at most that cap count
   (when none is under it, none is chosen);
2. the highest mean validation Dice ``D`` is found; every point within ``dice_tol`` of it
   (Dice >= D - dice_tol) is a candidate (``dice_tol`` = 0: only the points with Dice D);
3. among the candidates the lowest mean folding percentage wins, then the higher Dice, then
   the earlier point.

``dice_tol`` expresses the companion paper's choice of gamma = 0.01: Dice 0.833, 0.836 and 0.832
for gamma = 0.01, 0.1 and 1 are "almost the same", and 0.01 folds least (0.33 % against 1.35 %
and 4.39 %); ``--dice_tol 0.005`` picks it, ``--dice_tol 0`` would pick 0.1.
"""

import csv
import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from engine.plotting import save_figure  # noqa: E402

SYMBOLS = {"reg_param": "λ (reg_param)", "seg_param": "γ (seg_param)"}
DICE_COLOR, FOLD_COLOR = "#1f5fa8", "#d2691e"


def label(param):
    """Axis label of a parameter: the paper's symbol for the loss weights, else the name."""
    return SYMBOLS.get(param, param)


def result_rows(sweep, records):
    """One row per grid point: its parameters, metrics (None when missing), experiment and status."""
    rows = []
    for point in sweep["points"]:
        record = records.get(point["index"], {})
        metrics = record.get("metrics") or {}
        rows.append({"point": point["index"], "params": point["params"], "exp_num": record.get("exp_num"),
                     "status": record.get("status", "new"), **{k: metrics.get(k) for k in (
                         "dice_mean", "dice_std", "initial_dice_mean", "folding_percent_mean", "folding_percent_std",
                         "sdlogj_mean", "sdlogj_std", "n_pairs")}})
    return rows


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def choose_best(rows, dice_tol=0.0, max_folding=None):
    """The best row by the rule of the module doc, or None when no point qualifies."""
    rows = [r for r in rows if r["status"] == "done" and _finite(r["dice_mean"])]
    if max_folding is not None:
        rows = [r for r in rows if _finite(r["folding_percent_mean"]) and r["folding_percent_mean"] <= max_folding]
    if not rows:
        return None
    top = max(r["dice_mean"] for r in rows)
    near = [r for r in rows if r["dice_mean"] >= top - dice_tol]

    def folding(r):
        return r["folding_percent_mean"] if _finite(r["folding_percent_mean"]) else math.inf

    return min(near, key=lambda r: (folding(r), -r["dice_mean"], r["point"]))


def _value_text(value):
    return json.dumps(value) if not isinstance(value, str) else value


CSV_COLUMNS = ("dice_mean", "dice_std", "initial_dice_mean", "folding_percent_mean", "folding_percent_std",
               "sdlogj_mean", "sdlogj_std", "n_pairs", "exp_num", "status")


def write_csv(path, sweep, rows, best):
    """``results.csv``: point, each parameter, metrics, experiment number, status, best (1/0)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["point", *sweep["params"], *CSV_COLUMNS, "best"])
        for r in rows:
            cells = ["" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in CSV_COLUMNS]
            writer.writerow([r["point"], *(_value_text(r["params"][p]) for p in sweep["params"]), *cells,
                             int(best is not None and r["point"] == best["point"])])


def markdown_table(sweep, rows, best):
    """The table as markdown: one row per point, the best in bold."""
    dims = sweep["dim"]
    head = ["point", *sweep["params"], "Dice (val)", f"folding % ({'pixels' if dims == 2 else 'voxels'})",
            "SDlogJ", "experiment", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        dice = "" if r["dice_mean"] is None else f"{r['dice_mean']:.4f} ± {r['dice_std']:.4f}"
        fold = "" if r["folding_percent_mean"] is None else \
            f"{r['folding_percent_mean']:.3f} ± {r['folding_percent_std']:.3f}"
        sdlogj = "" if r["sdlogj_mean"] is None else f"{r['sdlogj_mean']:.4f}"
        exp = "" if r["exp_num"] is None else f"exp{r['exp_num']}"
        status = "**best**" if best is not None and r["point"] == best["point"] else r["status"]
        cells = [str(r["point"]), *(_value_text(r["params"][p]) for p in sweep["params"]), dice, fold, sdlogj, exp,
                 status]
        if best is not None and r["point"] == best["point"]:
            cells[1:1 + len(sweep["params"])] = [f"**{c}**" for c in cells[1:1 + len(sweep["params"])]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_title(sweep):
    """``2D sweep 3: reg_param (λ) with seg_param = 0.01 carried from 2D sweep 2``."""
    text = f"{sweep['dim']}D sweep {sweep['sweep']}: {', '.join(label(p) for p in sweep['params'])}"
    stage = sweep.get("stage") or {}
    if stage.get("carried"):
        carried = ", ".join(f"{label(k)} = {_value_text(v)}" for k, v in stage["carried"].items())
        prev = stage.get("previous") or {}
        text += f", {carried} (best of {prev.get('dim')}D sweep {prev.get('sweep')})"
    return text


def _positions(values):
    """x positions and axis scale for parameter values: log when all positive numbers, symlog with a
    zero, categorical otherwise. Returns (x, scale, linthresh)."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric:
        return list(range(len(values))), "category", None
    if all(v > 0 for v in values):
        return list(values), "log", None
    if all(v >= 0 for v in values) and any(v > 0 for v in values):
        return list(values), "symlog", min(v for v in values if v > 0)
    return list(values), "linear", None


def draw_sweep(ax, sweep, rows, best, title=None):
    """Validation Dice (mean ± std, error bars) against the first parameter, folding % on a twin axis.

    With several parameters each combination of the others is its own line.
    """
    param, others = sweep["params"][0], sweep["params"][1:]
    values = list(dict.fromkeys(json.dumps(r["params"][param]) for r in rows))
    values = [json.loads(v) for v in values]
    x_all, scale, linthresh = _positions(values)
    xmap = {json.dumps(v): x for v, x in zip(values, x_all)}
    groups = {}
    for r in rows:
        groups.setdefault(tuple(json.dumps(r["params"][p]) for p in others), []).append(r)
    fold_ax = ax.twinx()
    markers = "osD^v<>"
    for g, (key, members) in enumerate(groups.items()):
        done = [r for r in members if _finite(r["dice_mean"])]
        if not done:
            continue
        # Lines join the points along the axis, whatever order --values listed them in.
        done.sort(key=lambda r: xmap[json.dumps(r["params"][param])])
        x = [xmap[json.dumps(r["params"][param])] for r in done]
        name = ", ".join(f"{label(p)} = {json.loads(k)}" for p, k in zip(others, key))
        ax.errorbar(x, [r["dice_mean"] for r in done], yerr=[r["dice_std"] or 0 for r in done], color=DICE_COLOR,
                    marker=markers[g % len(markers)], capsize=4, lw=1.8, ms=6,
                    label=f"Dice{' (' + name + ')' if name else ''}")
        fold = [(xx, r["folding_percent_mean"]) for xx, r in zip(x, done) if _finite(r["folding_percent_mean"])]
        if fold:
            fold_ax.plot(*zip(*fold), color=FOLD_COLOR, ls="--", marker=markers[g % len(markers)], mfc="white",
                         lw=1.4, ms=6, label=f"folding %{' (' + name + ')' if name else ''}")
    before = [r["initial_dice_mean"] for r in rows if _finite(r["initial_dice_mean"])]
    if before:
        ax.axhline(float(np.mean(before)), color="0.45", ls=":", lw=1.2, label="Dice before registration")
    if best is not None and _finite(best["dice_mean"]):
        bx = xmap[json.dumps(best["params"][param])]
        ax.plot([bx], [best["dice_mean"]], marker="*", ms=18, color="gold", mec="black", zorder=5, ls="none",
                label=f"chosen: {label(param)} = {_value_text(best['params'][param])}")
    if scale == "category":
        ax.set_xticks(x_all, [_value_text(v) for v in values])
        ax.set_xlim(-0.5, len(values) - 0.5)
    else:
        if scale == "symlog":
            ax.set_xscale("symlog", linthresh=linthresh)
        elif scale == "log":
            ax.set_xscale("log")
        ax.set_xticks(x_all, [_value_text(v) for v in values])
        ax.minorticks_off()
        if scale == "log" and len(x_all) > 1:
            lo, hi = min(x_all), max(x_all)
            ax.set_xlim(lo / (hi / lo) ** 0.08, hi * (hi / lo) ** 0.08)
    ax.set_xlabel(label(param) + (" (log scale)" if scale in ("log", "symlog") else ""))
    ax.set_ylabel("validation Dice (mean ± std over pairs)", color=DICE_COLOR)
    ax.tick_params(axis="y", colors=DICE_COLOR)
    unit = "pixels" if sweep["dim"] == 2 else "voxels"
    fold_ax.set_ylabel(f"folded {unit}, J < 0 (%)", color=FOLD_COLOR)
    fold_ax.tick_params(axis="y", colors=FOLD_COLOR)
    fold_ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    handles = [h for a in (ax, fold_ax) for h in a.get_legend_handles_labels()[0]]
    labels = [t for a in (ax, fold_ax) for t in a.get_legend_handles_labels()[1]]
    if handles:
        ax.legend(handles, labels, loc="best", fontsize=8, framealpha=0.9)
    ax.set_title(title or sweep_title(sweep), fontsize=10)


def save_sweep_plot(path, sweep, rows, best):
    """``sweep.png``: :func:`draw_sweep` for one sweep."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    draw_sweep(ax, sweep, rows, best)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_coordinate_plot(path, stages):
    """The paper's Figure 3: one panel per coordinate-descent stage, side by side.

    Parameters
    ----------
    stages : list of (sweep, rows, best)
    """
    fig, axes = plt.subplots(1, len(stages), figsize=(6.2 * len(stages), 4.4), squeeze=False)
    for k, (ax, (sweep, rows, best)) in enumerate(zip(axes[0], stages)):
        draw_sweep(ax, sweep, rows, best, title=f"stage {k + 1}: {sweep_title(sweep)}")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def write_reports(folder, sweep, rows, best):
    """``results.csv``, ``results.md`` and ``sweep.png`` in the sweep folder; returns the markdown table."""
    table = markdown_table(sweep, rows, best)
    write_csv(folder / "results.csv", sweep, rows, best)
    (folder / "results.md").write_text(f"# {sweep_title(sweep)}\n\n{table}\n")
    if any(_finite(r["dice_mean"]) for r in rows):
        save_sweep_plot(folder / "sweep.png", sweep, rows, best)
    return table


__all__ = ["choose_best", "draw_sweep", "label", "markdown_table", "result_rows", "save_coordinate_plot",
           "save_sweep_plot", "sweep_title", "write_csv", "write_reports"]
