"""The tables and files an evaluation writes: ``summary.json`` entries, ``per_pair.csv``,
``per_label.csv``, and the table printed by ``evaluate_<d>d.py``.

Means and standard deviations are over pairs; NaN (labels absent from both maps, pairs without
label maps) is left out, and a statistic with no finite value is null in JSON and ``nan`` in CSV.
SDlogJ is the exception: it is NaN only for a field with non-finite values (a diverged model), so
its mean is null when any pair has one, and ``n_pairs_nonfinite_field`` counts those pairs (their
folding counts every non-finite pixel as folded).
"""

import csv
import math

import numpy as np

from engine.scoring import PairMetrics

HD95_UNITS = "voxels of the full-resolution grid (mm for 1 mm data such as OASIS)"
# Keys of summary.json that measure time or describe the run rather than the model's output.
RUN_KEYS = ("time_per_pair_s", "time_per_pair_std_s", "time_per_pair_median_s", "wall_time_s", "created",
            "git_commit", "versions")


def mean_std(values):
    """Mean and population std of the finite values; (None, None) when there are none (JSON null)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std())


def _sdlogj_stats(values):
    """(pairs with a non-finite field, mean, std) of per-pair SDlogJ; mean and std None if any.

    SDlogJ is NaN only where the field itself is not finite; left out, those pairs would make the
    mean look better than the run was.
    """
    broken = int((~np.isfinite(np.asarray(values, dtype=np.float64))).sum())
    return (broken, None, None) if broken else (broken, *mean_std(values))


def summarize(metrics, label_ids):
    """Means and standard deviations over pairs (Dice and HD95 over labelled pairs only).

    Returns
    -------
    dict
        The metric part of ``summary.json``.
    """
    labelled = metrics.labelled
    initial = PairMetrics.pair_score(metrics.dice_before)[labelled]
    after = PairMetrics.pair_score(metrics.dice_after)[labelled]
    hd95 = PairMetrics.pair_score(metrics.hd95)[labelled]
    s = {"n_pairs": int(len(labelled)), "n_pairs_with_labels": int(labelled.sum()),
         "n_pairs_without_labels": int((~labelled).sum()), "n_labels": len(label_ids)}
    s["initial_dice_mean"], s["initial_dice_std"] = mean_std(initial)
    s["dice_mean"], s["dice_std"] = mean_std(after)
    finite = after[np.isfinite(after)]  # the pairs dice_mean averages
    s["dice_median"] = float(np.median(finite)) if finite.size else None
    s["folding_percent_mean"], s["folding_percent_std"] = mean_std(metrics.folding)
    s["n_pairs_nonfinite_field"], s["sdlogj_mean"], s["sdlogj_std"] = _sdlogj_stats(metrics.sdlogj)
    s["hd95_mean"], s["hd95_std"] = mean_std(hd95)
    s["hd95_units"] = HD95_UNITS
    if metrics.hd95_one_sided is not None:
        s["hd95_one_sided_labels"] = int(metrics.hd95_one_sided[labelled].sum())
    s["time_per_pair_s"], s["time_per_pair_std_s"] = mean_std(metrics.time_s)
    s["time_per_pair_median_s"] = float(np.median(metrics.time_s)) if len(metrics.time_s) else None
    if metrics.network is not None:
        net = metrics.network
        net_dice_mean, net_dice_std = mean_std(PairMetrics.pair_score(net["dice_after"])[labelled])
        s["network"] = {"dice_mean": net_dice_mean,
                        "dice_std": net_dice_std,
                        "folding_percent_mean": mean_std(net["folding"])[0],
                        "sdlogj_mean": _sdlogj_stats(net["sdlogj"])[1],
                        "time_per_pair_s": mean_std(net["time_s"])[0],
                        "notes": "the network's own field, before refinement; the main entries score the "
                                 "refined field and their time includes refinement"}
    s["notes"] = ("Dice and HD95 are means over the pairs with label maps; pair scores average the labels "
                  "present in either map. HD95 is the larger of the two directed 95th percentiles; a label in only "
                  "one map scores the grid's diagonal (hd95_one_sided_labels counts them) and Dice 0. Pairs without "
                  "label maps count towards folding, SDlogJ and time only.")
    return s


def _fmt(value):
    """CSV cell: integers as they are, floats with 8 significant digits, NaN as ``nan``."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return "nan" if not math.isfinite(value) else f"{value:.8g}"
    return value


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([_fmt(v) for v in row] for row in rows)


def write_per_pair_csv(path, metrics, split):
    """One row per pair: subjects, labels present, initial Dice, Dice, folding, SDlogJ, HD95, time."""
    initial = PairMetrics.pair_score(metrics.dice_before)
    after = PairMetrics.pair_score(metrics.dice_after)
    hd95 = PairMetrics.pair_score(metrics.hd95)
    pairs = split.pairs.tolist()
    rows = [(p, split.subjects[m], split.subjects[f], metrics.labelled[p], initial[p], after[p], metrics.folding[p],
             metrics.sdlogj[p], hd95[p], metrics.time_s[p]) for p, (m, f) in enumerate(pairs)]
    _write_csv(path, ["pair", "moving", "fixed", "has_labels", "initial_dice", "dice", "folding_percent", "sdlogj",
                      "hd95", "time_s"], rows)


def write_per_label_csv(path, metrics, label_ids, label_names):
    """One row per label: id, name, pairs where it is present, Dice before/after and HD95 (mean, std).

    ``n_pairs`` counts the pairs where the label is in the warped or the fixed map (a finite Dice
    after registration), which are also the pairs its HD95 averages; Dice before registration
    averages the pairs where it is in the moving or the fixed map, usually the same ones.
    """
    rows = []
    for k, label in enumerate(label_ids):
        before, after, hd = metrics.dice_before[:, k], metrics.dice_after[:, k], metrics.hd95[:, k]
        rows.append((label, label_names.get(label, ""), int(np.isfinite(after).sum()), *_nan_to_cells(before),
                     *_nan_to_cells(after), *_nan_to_cells(hd)))
    _write_csv(path, ["label", "name", "n_pairs", "initial_dice_mean", "initial_dice_std", "dice_mean", "dice_std",
                      "hd95_mean", "hd95_std"], rows)


def _nan_to_cells(values):
    mean, std = mean_std(values)
    return (float("nan") if mean is None else mean), (float("nan") if std is None else std)


def _scored_on(summary):
    """``native 160x192`` or ``eval 80x96``: the label grid Dice and HD95 were computed on."""
    mode = summary.get("score_on", "eval")  # summaries written before the choice existed scored the eval grid
    shape = summary.get("label_shape") or summary["eval_shape"]
    return f"{mode} {'x'.join(map(str, shape))}"


def format_table(summaries):
    """The printed summary: one row per evaluation size; ``scored on`` names the label grid of Dice and HD95."""
    header = ["size", "shape", "pairs", "scored on", "Dice before", "Dice after", "folding %", "SDlogJ", "HD95",
              "ms/pair"]

    def pm(mean, std, digits):
        return "n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def num(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    def ms(seconds):
        return num(None if seconds is None else 1000 * seconds, 2)

    rows = []
    for s in summaries:
        size = str(s["eval_size"])
        if s.get("network"):  # refined evaluation: the network's own field first, then refined
            net = s["network"]
            rows.append([size + " net", "x".join(map(str, s["eval_shape"])), str(s["n_pairs"]), _scored_on(s),
                         num(s["initial_dice_mean"], 4), pm(net["dice_mean"], net["dice_std"], 4),
                         num(net["folding_percent_mean"], 3), num(net["sdlogj_mean"], 4), "", ms(net["time_per_pair_s"])])
            size += f" +refine {s['refine_steps']}"
        rows.append([size, "x".join(map(str, s["eval_shape"])), str(s["n_pairs"]), _scored_on(s),
                     num(s["initial_dice_mean"], 4), pm(s["dice_mean"], s["dice_std"], 4),
                     pm(s["folding_percent_mean"], s["folding_percent_std"], 3), num(s["sdlogj_mean"], 4),
                     num(s["hd95_mean"], 2), ms(s["time_per_pair_s"])])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_report(dim, summaries):
    """Print what ``evaluate_<d>d.py`` shows: the run, the table, and a note for anything unusual.

    ``summaries``: one ``summary.json`` dict per evaluated size, of one experiment and checkpoint.
    """
    s = summaries[0]
    trained = "x".join(map(str, s["train_size"])) if s["train_size"] else "?"
    print(f"experiment {s['exp_num']} ({dim}D {s['model_name']}, {s['n_params']:,} parameters), checkpoint "
          f"{s['checkpoint']} (epoch {s['epoch']}, trained at {trained}), {s['split']} split, {s['device']}, "
          f"batch {s['batch_size']}")
    if s["data_tag"]:
        print(f"data: {s['dataset']}" + (f" at {s['data_root']}" if s["data_root"] else "") +
              f" (from {s['config_file']}, not the experiment's own data)")
    print(format_table(summaries))
    if s["score_on"] == "native":
        print(f"Dice and HD95 scored on the native {'x'.join(map(str, s['full_shape']))} label maps (field "
              "resampled to them); folding and SDlogJ on the evaluation grid")
    else:
        print("Dice and HD95 scored on label maps subsampled to each evaluation grid (--score_on eval, as "
              "published); folding and SDlogJ on the evaluation grid")
    def per_size(key):  # {eval size: count} of the sizes where ``key`` is non-zero
        return {x["eval_size"]: x[key] for x in summaries if x.get(key)}

    one_sided = per_size("hd95_one_sided_labels")
    if one_sided:
        print("note: HD95 gave the grid's diagonal to labels present in one map only (erased or created by the "
              "registration, or lost to subsampling with --score_on eval): " +
              ", ".join(f"{n} at size {size}" for size, n in one_sided.items()))
    if s.get("training_subjects_in_split"):
        print(f"warning: {s['training_subjects_in_split']} subject(s) of the {s['split']} split were trained on; "
              "these scores are not held out")
    broken = per_size("n_pairs_nonfinite_field")
    if broken:
        print("warning: the model produced non-finite displacements (NaN or inf) for " +
              ", ".join(f"{n} pair(s) at size {size}" for size, n in broken.items()) +
              "; their pixels count as folded and the SDlogJ mean is left empty")
    unlabelled = s["n_pairs_without_labels"]
    if unlabelled:
        print(f"note: {unlabelled} of {s['n_pairs']} pairs have no label maps; Dice and HD95 average the other "
              f"{s['n_pairs_with_labels']}")


__all__ = ["HD95_UNITS", "RUN_KEYS", "format_table", "print_report", "summarize", "write_per_label_csv",
           "write_per_pair_csv"]
