"""Evaluation of a trained experiment: the code behind ``evaluate_2d.py`` and ``evaluate_3d.py``.

One code path for 2D and 3D. ``evaluate_<d>d.py --exp_num N`` reads experiment N's stored
``config.json``, rebuilds the model from its final ``weights.pth`` (or the checkpoint of
``--ckpt_epoch E``), loads the test split (``--split val`` for validation) and registers every pair
at full resolution, the data's native shape, as published (DESIGN.md A.6). ``--size S [S ...]``
evaluates at other resolutions instead (smallest side ``S``, aspect ratio kept), one output
folder per size, so ``--size 80 160`` gives the train-resolution / test-resolution table.

Protocol
--------
- Everything runs under ``torch.inference_mode()`` on the chosen device; the split is read once
  and resized there (images linearly, labels by nearest neighbour; ``utils.batches.DeviceSplit``).
- Pairs go through the model in batches (``--batch_size``, default the config's validation batch
  size). Time per pair is the forward pass plus the image warp of a batch, measured with device
  synchronisation after a warm-up pass of each batch size, divided by the batch size. With
  ``--batch_size 1`` it is the single-pair latency the paper reports.
- Per pair: Dice per label before ("initial") and after registration, labels warped with
  nearest neighbour; folding (% of pixels with Jacobian determinant J < 0) and SDlogJ (std of
  ``log(clamp(J, 1e-9))``), both of ``x + u(x)`` in pixel units of the evaluation grid; HD95 per
  label after registration, in voxels of the full-resolution grid (millimetres for 1 mm data
  such as OASIS), so that it compares across ``--size``. A pair score is the mean over the
  labels present in either map (``utils.metrics``).
- Pairs whose subjects lack a label map are registered and scored on folding, SDlogJ and time;
  their Dice and HD95 are NaN and they are left out of every Dice and HD95 mean
  (``summary.json`` counts them in ``n_pairs_without_labels``).
- Nothing is random: evaluating the same checkpoint twice gives identical metrics (timings aside).

Outputs, in ``experiments/<d>d/exp<N>/eval/<checkpoint>_<size>/`` (``<checkpoint>`` is "final" or
"epoch<E>", ``<size>`` the evaluation's smallest side; ``_val`` is appended for the validation
split)::

    summary.json      means and standard deviations over pairs, timing, context (written last:
                      its presence marks a complete evaluation)
    per_pair.csv      one row per pair
    per_label.csv     one row per label: Dice before/after and HD95, mean and std over pairs
    panel_pair<k>.png example registrations (fixed, moving, warped, differences, grid, |u|, J)
    dice_boxplot.png  per-label Dice before and after registration
"""

import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.dataset import load_split
from data.resize import shape_for_size
from models import count_parameters, to_pixel_units, warp
from utils import experiment as xp
from utils.batches import DeviceSplit
from utils.checkpoint import load_model
from utils.cli import evaluate_parser
from utils.config import resolve_config
from utils.device import select_device, synchronize
from utils.errors import ConfigError, UserError
from utils.fileio import read_json, write_json
from utils.metrics import dice_per_label, folding_percent, hd95_per_label, jacobian_determinant, sdlogj
from utils.plotting import dice_boxplot, registration_panel, save_figure

N_PANELS = 3
HD95_UNITS = "voxels of the full-resolution grid (mm for 1 mm data such as OASIS)"
# Keys of summary.json that measure time or describe the run rather than the model's output.
RUN_KEYS = ("time_per_pair_s", "time_per_pair_std_s", "time_per_pair_median_s", "wall_time_s", "created",
            "git_commit", "versions")


@dataclass
class PairMetrics:
    """Per-pair results of one evaluation (pairs in the split's order).

    Attributes
    ----------
    dice_before, dice_after, hd95 : numpy.ndarray
        (n_pairs, n_labels) float64; NaN for labels absent from both maps and for pairs
        without label maps (HD95: also for labels absent from either map).
    folding, sdlogj, time_s : numpy.ndarray
        (n_pairs,) float64: % of pixels with J < 0, SDlogJ, seconds of forward + warp.
    labelled : numpy.ndarray
        (n_pairs,) bool: both subjects of the pair have a label map.
    """

    dice_before: np.ndarray
    dice_after: np.ndarray
    hd95: np.ndarray
    folding: np.ndarray
    sdlogj: np.ndarray
    time_s: np.ndarray
    labelled: np.ndarray

    @staticmethod
    def pair_score(per_label):
        """Mean over the labels of each pair, skipping NaN; NaN where a pair has none."""
        finite = np.isfinite(per_label)
        count = finite.sum(1)
        total = np.where(finite, per_label, 0.0).sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _mean_std(values):
    """Mean and population std of the finite values; (None, None) when there are none (JSON null)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std())


def evaluation_parser(dim):
    """Flags of ``evaluate_<dim>d.py``: the shared ones of ``utils.cli`` plus evaluation options."""
    parser = evaluate_parser(dim)
    parser.add_argument("--batch_size", type=int, help="pairs per forward pass (default: the experiment's "
                        "validation batch size; 1 times single-pair latency as published)")
    parser.add_argument("--n_panels", type=int, default=N_PANELS, help=f"example panels to draw (default {N_PANELS})")
    return parser


def evaluation_shapes(sizes, full_shape):
    """``[(size, shape)]`` to evaluate: the native shape when ``sizes`` is empty, else one per size.

    Parameters
    ----------
    sizes : sequence of int or None
        ``--size`` values (smallest side); repeated shapes are evaluated once.
    full_shape : tuple of int
        The data's native spatial shape.
    """
    if not sizes:
        return [(min(full_shape), tuple(full_shape))]
    out = []
    for size in sizes:
        shape = shape_for_size(size, full_shape)
        if all(shape != s for _, s in out):
            out.append((size, shape))
    return out


def output_folder(exp_folder, checkpoint, size, split="test"):
    """``exp_folder/eval/<checkpoint>_<size>`` (``_val`` appended for the validation split)."""
    suffix = "" if split == "test" else f"_{split}"
    return Path(exp_folder) / "eval" / f"{checkpoint}_{size}{suffix}"


def panel_pairs(n_pairs, n_panels):
    """Indices of the pairs drawn as examples: evenly spread over the split, first and last included."""
    if n_panels <= 0 or n_pairs == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n_pairs - 1, min(n_panels, n_pairs))})


def _forward_warp(model, moving, fixed):
    return (flow := model(moving, fixed)), warp(moving, flow)


def timed_registration(model, moving, fixed, device):
    """Displacement, warped image and seconds of ``model`` forward + warp, synchronised on ``device``."""
    synchronize(device)
    start = time.perf_counter()
    flow, warped = _forward_warp(model, moving, fixed)
    synchronize(device)
    return flow, warped, time.perf_counter() - start


@torch.inference_mode()
def register_split(model, data, label_ids, batch_size, hd95_spacing=None, panels=(), on_panel=None,
                   progress=True, desc="pairs"):
    """Register every pair of ``data`` and score it.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on ``data.device``.
    data : utils.batches.DeviceSplit
        The split at the evaluation shape.
    label_ids : sequence of int
        Labels to score (background excluded).
    batch_size : int
        Pairs per forward pass.
    hd95_spacing : sequence of float, optional
        Voxel size per axis for HD95 (default 1).
    panels : collection of int
        Pair indices for which ``on_panel`` is called.
    on_panel : callable, optional
        ``on_panel(index, pair)``, called as soon as pair ``index`` is scored, with a dict of its
        ``fixed``, ``moving``, ``warped`` ((*spatial) tensors on the device), ``flow`` ((1, d, *spatial),
        normalised), ``jacobian`` and ``scores`` (dice_before, dice_after, folding, sdlogj).
    progress : bool
        Show a tqdm bar over pairs (it advances as each pair's HD95 is done, the slow part in 3D).
    desc : str
        Label of the progress bar.

    Returns
    -------
    PairMetrics
    """
    n, n_labels = len(data), len(label_ids)
    out = PairMetrics(*(np.full((n, n_labels), np.nan) for _ in range(3)),
                      *(np.zeros(n) for _ in range(3)), labelled=np.zeros(n, dtype=bool))
    device, panels = data.device, set(panels)
    # Warm-up: first calls allocate memory and plan FFTs; one pass per batch size seen below.
    for size in sorted({min(batch_size, n), n % batch_size or batch_size}):
        if n:
            warm = data.batch(torch.arange(size))
            _forward_warp(model, warm.moving, warm.fixed)
    synchronize(device)

    bar = tqdm(total=n, desc=desc, unit="pair", disable=not progress, dynamic_ncols=True, leave=False)
    try:
        dice_so_far = ""
        for idx, batch in data.batches(batch_size):
            # The stage shows in the bar: a 3D pair spends seconds in the forward pass and in HD95.
            bar.set_postfix_str(f"{dice_so_far}registering", refresh=True)
            flow, warped, seconds = timed_registration(model, batch.moving, batch.fixed, device)
            rows = idx.numpy()
            out.time_s[rows] = seconds / len(rows)
            jac = jacobian_determinant(flow)
            out.folding[rows] = folding_percent(jacobian=jac).cpu().numpy()
            out.sdlogj[rows] = sdlogj(jacobian=jac).cpu().numpy()
            warped_labels = None
            if batch.moving_labels is not None:
                labelled = batch.has_labels.cpu().numpy()
                out.labelled[rows] = labelled
                warped_labels = warp(batch.moving_labels, flow)  # integer maps: nearest neighbour
                before = dice_per_label(batch.moving_labels, batch.fixed_labels, label_ids).cpu().numpy()
                after = dice_per_label(warped_labels, batch.fixed_labels, label_ids).cpu().numpy()
                out.dice_before[rows[labelled]] = before[labelled]
                out.dice_after[rows[labelled]] = after[labelled]
            for k, row in enumerate(rows):
                if out.labelled[row]:
                    bar.set_postfix_str(f"{dice_so_far}HD95", refresh=True)
                    out.hd95[row] = hd95_per_label(warped_labels[k : k + 1], batch.fixed_labels[k : k + 1],
                                                   label_ids, hd95_spacing)[0]
                if row in panels and on_panel is not None:
                    scores = {"dice_before": PairMetrics.pair_score(out.dice_before[row : row + 1])[0],
                              "dice_after": PairMetrics.pair_score(out.dice_after[row : row + 1])[0],
                              "folding": out.folding[row], "sdlogj": out.sdlogj[row]}
                    on_panel(int(row), {"fixed": batch.fixed[k, 0], "moving": batch.moving[k, 0],
                                        "warped": warped[k, 0], "flow": flow[k : k + 1], "jacobian": jac[k],
                                        "scores": scores})
                bar.update(1)
            done = out.labelled[: rows[-1] + 1]
            if done.any():
                dice_so_far = f"Dice {np.mean(PairMetrics.pair_score(out.dice_after[: rows[-1] + 1][done])):.4f}, "
        bar.set_postfix_str(dice_so_far.rstrip(", "), refresh=True)
    finally:
        bar.close()
    return out


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
    s["initial_dice_mean"], s["initial_dice_std"] = _mean_std(initial)
    s["dice_mean"], s["dice_std"] = _mean_std(after)
    s["dice_median"] = float(np.median(after)) if np.isfinite(after).any() else None
    s["folding_percent_mean"], s["folding_percent_std"] = _mean_std(metrics.folding)
    s["sdlogj_mean"], s["sdlogj_std"] = _mean_std(metrics.sdlogj)
    s["hd95_mean"], s["hd95_std"] = _mean_std(hd95)
    s["hd95_units"] = HD95_UNITS
    s["time_per_pair_s"], s["time_per_pair_std_s"] = _mean_std(metrics.time_s)
    s["time_per_pair_median_s"] = float(np.median(metrics.time_s)) if len(metrics.time_s) else None
    s["notes"] = ("Dice and HD95 are means over the pairs with label maps; pair scores average the labels "
                  "present in either map. Pairs without label maps count towards folding, SDlogJ and time only.")
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
    """One row per label: id, name, pairs where it is present, Dice before/after and HD95 (mean, std)."""
    rows = []
    for k, label in enumerate(label_ids):
        before, after, hd = metrics.dice_before[:, k], metrics.dice_after[:, k], metrics.hd95[:, k]
        rows.append((label, label_names.get(label, ""), int(np.isfinite(after).sum()), *_nan_to_cells(before),
                     *_nan_to_cells(after), *_nan_to_cells(hd)))
    _write_csv(path, ["label", "name", "n_pairs", "initial_dice_mean", "initial_dice_std", "dice_mean", "dice_std",
                      "hd95_mean", "hd95_std"], rows)


def _nan_to_cells(values):
    mean, std = _mean_std(values)
    return (float("nan") if mean is None else mean), (float("nan") if std is None else std)


def _panel_title(split, index, scores):
    moving, fixed = (split.subjects[i] for i in split.pairs[index].tolist())
    text = f"pair {index}: {moving} -> {fixed}"
    if np.isfinite(scores["dice_after"]):
        text += f" | Dice {scores['dice_before']:.3f} -> {scores['dice_after']:.3f}"
    return text + f" | J<0 {scores['folding']:.2f}% | SDlogJ {scores['sdlogj']:.3f}"


def evaluate_at(model, split, size, shape, out_dir, context, batch_size, n_panels=N_PANELS, progress=True,
                antialias=False):
    """Evaluate ``model`` on ``split`` at ``shape`` and write every output to ``out_dir``.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on ``context["device"]``.
    split : data.dataset.RegistrationSplit
        The subjects at native resolution.
    size : int
        Smallest side of ``shape`` (names the folder).
    shape : tuple of int
        Evaluation shape.
    out_dir : path
        Output folder (created; outputs of an earlier evaluation in it are replaced).
    context : dict
        Entries copied into ``summary.json`` (experiment, checkpoint, device, ...); ``device`` is used.
    batch_size : int
        Pairs per forward pass.
    n_panels : int
        Example panels to draw.
    progress : bool
        Show a progress bar.
    antialias : bool
        Low-pass images before downsampling, as ``data_config.antialias`` did in training.

    Returns
    -------
    dict
        The summary written to ``summary.json``.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Outputs of an earlier evaluation into this folder (other --n_panels, an interrupted run) go first,
    # so the folder never mixes two runs; summary.json is written last, when everything else is there.
    for old in [out_dir / "summary.json", out_dir / "dice_boxplot.png", *out_dir.glob("panel_pair*.png")]:
        old.unlink(missing_ok=True)
    device = torch.device(context["device"])
    data = DeviceSplit(split, shape, device, antialias)
    full = split.shape
    # HD95 in full-resolution voxels: one evaluation-grid step spans (N_full - 1) / (N_eval - 1) of them.
    spacing = [(f - 1) / (e - 1) if e > 1 else 1.0 for f, e in zip(full, shape)]

    def draw(index, pair):
        fig = registration_panel(pair["fixed"], pair["moving"], pair["warped"], to_pixel_units(pair["flow"])[0],
                                 pair["jacobian"], title=_panel_title(split, index, pair["scores"]))
        save_figure(fig, out_dir / f"panel_pair{index}.png")

    metrics = register_split(model, data, split.label_ids, batch_size, spacing, panel_pairs(len(data), n_panels),
                             draw, progress, desc=f"{context['checkpoint']} {'x'.join(map(str, shape))}")
    del data  # free the resized split (device memory) before the next size
    if metrics.labelled.any():
        title = (f"{context['split']} split, {int(metrics.labelled.sum())} pairs, {context['checkpoint']} at "
                 f"{'x'.join(map(str, shape))}")
        save_figure(dice_boxplot(metrics.dice_before[metrics.labelled], metrics.dice_after[metrics.labelled],
                                 split.label_ids, split.label_names, title=title), out_dir / "dice_boxplot.png")
    write_per_pair_csv(out_dir / "per_pair.csv", metrics, split)
    write_per_label_csv(out_dir / "per_label.csv", metrics, split.label_ids, split.label_names)
    # Headline numbers first, then what was evaluated, then how it ran.
    head = {k: context[k] for k in ("exp_num", "dim", "checkpoint", "split") if k in context}
    summary = {**head, "eval_size": int(size), "eval_shape": list(shape), "full_shape": list(full),
               **summarize(metrics, split.label_ids), **{k: v for k, v in context.items() if k not in head},
               "batch_size": int(batch_size), "created": xp.now(), "wall_time_s": time.perf_counter() - started}
    write_json(out_dir / "summary.json", summary)
    return summary


def format_table(summaries):
    """The printed summary: one row per evaluation size."""
    header = ["size", "shape", "pairs", "Dice before", "Dice after", "folding %", "SDlogJ", "HD95", "ms/pair"]

    def pm(mean, std, digits):
        return "n/a" if mean is None else f"{mean:.{digits}f} ± {std:.{digits}f}"

    def num(value, digits):
        return "n/a" if value is None else f"{value:.{digits}f}"

    rows = [[str(s["eval_size"]), "x".join(map(str, s["eval_shape"])), str(s["n_pairs"]),
             num(s["initial_dice_mean"], 4), pm(s["dice_mean"], s["dice_std"], 4),
             pm(s["folding_percent_mean"], s["folding_percent_std"], 3), num(s["sdlogj_mean"], 4),
             num(s["hd95_mean"], 2), num(None if s["time_per_pair_s"] is None else 1000 * s["time_per_pair_s"], 2)]
            for s in summaries]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _load_experiment_config(dim, exp_num):
    folder = xp.experiment_dir(dim, exp_num)
    path = folder / "config.json"
    return folder, resolve_config(read_json(path), dim, source=str(path))


def evaluate_experiment(dim, exp_num, ckpt_epoch=None, sizes=None, split="test", gpu_num=0, batch_size=None,
                        n_panels=N_PANELS, progress=True):
    """Evaluate experiment ``exp_num`` at each requested size; the API behind ``evaluate_<dim>d.py``.

    Parameters
    ----------
    dim : int
        2 or 3.
    exp_num : int
        Experiment number (``experiments/<dim>d/exp<N>``).
    ckpt_epoch : int, optional
        Evaluate this checkpoint instead of the final weights.
    sizes : sequence of int, optional
        Evaluation sizes (smallest side); default the data's native shape.
    split : {"test", "val"}
        Split to evaluate.
    gpu_num : int
        ``cuda:<gpu_num>``; -1 for the CPU.
    batch_size : int, optional
        Pairs per forward pass (default: the config's ``val_batch_size`` or ``batch_size``).
    n_panels : int
        Example panels per size.
    progress : bool
        Show progress bars.

    Returns
    -------
    list of dict
        One summary per size, also written to ``summary.json`` in each output folder.

    Raises
    ------
    UserError
        Unknown experiment, missing weights or checkpoint (listing the existing ones), a split the
        config does not define, a bad flag value.
    """
    folder, config = _load_experiment_config(dim, exp_num)
    if config["data_config"]["splits"].get(split) is None:
        raise ConfigError(f"experiment {exp_num} has no {split} split (data_config.splits.{split} is null in "
                          f"{folder / 'config.json'}); set an index range there or evaluate another --split")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    tc = config["train_config"]
    batch_size = batch_size or tc["val_batch_size"] or tc["batch_size"]
    device = select_device(gpu_num)
    model, info = load_model(folder, ckpt_epoch, device)
    data = load_split(config["data_config"], dim, split)
    if len(data.pairs) == 0:
        raise ConfigError(f"the {split} split of experiment {exp_num} has no pairs; widen data_config.splits.{split}")
    context = {"exp_num": exp_num, "dim": dim, "model_name": config["model_name"],
               "n_params": count_parameters(model), "checkpoint": info["checkpoint"], "epoch": info["epoch"],
               "checkpoint_path": info["path"], "train_size": info["train_size"], "split": split,
               "dataset": config["data_config"]["dataset"], "data_root": config["data_config"]["root"],
               "label_scheme": config["data_config"]["label_scheme"],
               "device": str(device), "versions": xp.software_versions(), "git_commit": xp.git_commit()}
    summaries = []
    for size, shape in evaluation_shapes(sizes, data.shape):
        out_dir = output_folder(folder, info["checkpoint"], size, split)
        summaries.append(evaluate_at(model, data, size, shape, out_dir, context, batch_size, n_panels, progress,
                                     config["data_config"]["antialias"]))
        if progress:
            print(f"wrote {out_dir}", file=sys.stderr)
    return summaries


def evaluate_main(dim, argv=None):
    """Entry point shared by ``evaluate_2d.py`` and ``evaluate_3d.py``: evaluate, then print the table."""
    args = evaluation_parser(dim).parse_args(argv)
    summaries = evaluate_experiment(dim, args.exp_num, args.ckpt_epoch, args.size, args.split, args.gpu_num,
                                    args.batch_size, args.n_panels)
    s = summaries[0]
    trained = "x".join(map(str, s["train_size"])) if s["train_size"] else "?"
    print(f"experiment {s['exp_num']} ({dim}D {s['model_name']}, {s['n_params']:,} parameters), checkpoint "
          f"{s['checkpoint']} (epoch {s['epoch']}, trained at {trained}), {s['split']} split, {s['device']}, "
          f"batch {s['batch_size']}")
    print(format_table(summaries))
    unlabelled = s["n_pairs_without_labels"]
    if unlabelled:
        print(f"note: {unlabelled} of {s['n_pairs']} pairs have no label maps; Dice and HD95 average the other "
              f"{s['n_pairs_with_labels']}")
    return 0


__all__ = ["PairMetrics", "evaluate_at", "evaluate_experiment", "evaluate_main", "evaluation_parser",
           "evaluation_shapes", "format_table", "output_folder", "panel_pairs", "register_split", "summarize",
           "timed_registration", "write_per_label_csv", "write_per_pair_csv"]
