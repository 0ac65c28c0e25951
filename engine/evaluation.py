"""Evaluation of a trained experiment: the code behind ``evaluate_2d.py`` and ``evaluate_3d.py``.

One code path for 2D and 3D. ``evaluate_<d>d.py --exp_num N`` reads experiment N's stored
``config.json``, rebuilds the model from its final ``weights.pth`` (or the checkpoint of
``--ckpt_epoch E``), loads the test split (``--split val`` for validation) and registers every pair
at full resolution, the data's native shape, as published (DESIGN.md A.6). ``--size S [S ...]``
evaluates at other resolutions instead (smallest side ``S``, aspect ratio kept), one output
folder per size, so ``--size 80 160`` gives the train-resolution / test-resolution table.
This module drives an evaluation; the registration loop that scores each pair is
:mod:`engine.scoring`, the tables and files it writes are :mod:`engine.reports`.
``--config_file C`` evaluates on C's ``data_config`` instead of the stored one (another dataset,
or the same data moved), into folders named by that data, so results on other data never replace
those on the training data; so does a ``config.json`` whose ``data_config`` was edited after the
weights were trained (they carry their config). The training subjects (the held-out check) and
the image resizing are always those of the config the weights were trained with.

Protocol
--------
- Everything runs under ``torch.inference_mode()`` on the chosen device; the split is read once
  and resized there (images linearly, labels by nearest neighbour; ``engine.batches.DeviceSplit``).
- Pairs go through the model in batches (``--batch_size``, default the config's validation batch
  size). Time per pair is the forward pass plus the image warp of a batch, measured with device
  synchronisation after a warm-up pass of each batch size, divided by the batch size. With
  ``--batch_size 1`` it is the single-pair latency the paper reports.
- Per pair: Dice per label before ("initial") and after registration, labels warped with
  nearest neighbour; folding (% of pixels with Jacobian determinant J < 0) and SDlogJ (std of
  ``log(clamp(J, 1e-9))``), both of ``x + u(x)`` in pixel units of the evaluation grid (the field
  the model produced); HD95 per label after registration, in voxels of the full-resolution grid
  (millimetres for 1 mm data such as OASIS), so that it compares across ``--size``. A pair score
  is the mean over the labels present in either map (``engine.metrics``).
- Which label maps Dice and HD95 score (``--score_on``): ``native`` (default) scores the native
  label maps: the predicted field is resampled to the native grid (linear, corners aligned) and
  the native moving labels are warped with it, so every ``--size`` scores the same label set.
  ``eval`` is the published way: the label maps are subsampled to the evaluation grid by nearest
  neighbour, where small structures can vanish at ``--size 80``. At the native size both agree.
- Pairs whose subjects lack a label map are registered and scored on folding, SDlogJ and time;
  their Dice and HD95 are NaN and they are left out of every Dice and HD95 mean
  (``summary.json`` counts them in ``n_pairs_without_labels``).
- Nothing is random: evaluating the same checkpoint twice gives identical metrics (timings aside).

Outputs, in ``experiments/<d>d/exp<N>/eval/<checkpoint>_<size>[_<data tag>][_evalgrid][_val]/``
(``<checkpoint>`` is "final" or "epoch<E>", ``<size>`` the evaluation's smallest side; ``<data
tag>`` names the data when it is not the data the weights were trained with,
``_evalgrid`` marks ``--score_on eval``, ``_val`` the validation split)::

    summary.json      means and standard deviations over pairs, timing, context (written last:
                      its presence marks a complete evaluation)
    per_pair.csv      one row per pair
    per_label.csv     one row per label: Dice before/after and HD95, mean and std over pairs
    panel_pair<k>.png example registrations (fixed, moving, warped, differences, grid, |u|, J)
    dice_boxplot.png  per-label Dice before and after registration
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch

from data.dataset import load_split, shared_subjects
from data.resize import shape_for_size
from engine import experiment as xp
from engine.batches import DeviceSplit
from engine.checkpoint import add_fold_repair_argument, load_model, set_fold_repair
from engine.config import load_config, resolve_config, trained_config
from engine.eval_folders import data_tag, output_folder
from engine.plotting import dice_boxplot, registration_panel, save_figure
from engine.reports import print_report, summarize, write_per_label_csv, write_per_pair_csv
from engine.refine import DEFAULT_REFINE_LR, refine_field, refine_loss
from engine.scoring import register_split
from losses import RegistrationLoss
from models import count_parameters, to_pixel_units
from utils.cli import add_cuda_graphs_argument, evaluate_parser
from utils.device import cuda_graphs_on, select_device
from utils.errors import ConfigError, UserError
from utils.fileio import read_json, write_json

N_PANELS = 3
SCORE_ON = ("native", "eval")


def evaluation_parser(dim):
    """Flags of ``evaluate_<dim>d.py``: the shared ones of ``utils.cli`` plus evaluation options."""
    parser = evaluate_parser(dim)
    parser.add_argument("--batch_size", type=int, help="pairs per forward pass (default: the experiment's "
                        "validation batch size; 1 times single-pair latency as published)")
    parser.add_argument("--n_panels", type=int, default=N_PANELS, help=f"example panels to draw (default {N_PANELS})")
    parser.add_argument("--score_on", choices=SCORE_ON, default="native",
                        help="label maps Dice and HD95 score: native (default; the field is resampled to the "
                        "native grid) or eval (subsampled to the evaluation grid, as published)")
    parser.add_argument("--refine", type=int, default=0, metavar="K",
                        help="refine each pair's field with K Adam steps on its own similarity, smoothness and "
                        "folding penalty (engine/refine.py); reports the network's field and the refined one "
                        "(default 0: off)")
    parser.add_argument("--refine_lr", type=float, default=DEFAULT_REFINE_LR,
                        help=f"refinement step in pixels (default {DEFAULT_REFINE_LR})")
    add_fold_repair_argument(parser, outputs="; outputs go to _repairoff / _repairon folders")
    add_cuda_graphs_argument(parser)
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


def panel_pairs(n_pairs, n_panels):
    """Indices of the pairs drawn as examples: evenly spread over the split, first and last included."""
    if n_panels <= 0 or n_pairs == 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n_pairs - 1, min(n_panels, n_pairs))})


def _panel_title(split, index, scores):
    moving, fixed = (split.subjects[i] for i in split.pairs[index].tolist())
    text = f"pair {index}: {moving} -> {fixed}"
    if np.isfinite(scores["dice_after"]):
        text += f" | Dice {scores['dice_before']:.3f} -> {scores['dice_after']:.3f}"
    return text + f" | J<0 {scores['folding']:.2f}% | SDlogJ {scores['sdlogj']:.3f}"


def evaluate_at(model, split, size, shape, out_dir, context, batch_size, n_panels=N_PANELS, progress=True,
                antialias=False, score_on="native", refine=None, cuda_graphs=False):
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
    score_on : {"native", "eval"}
        Score Dice and HD95 on the native label maps (the field resampled to the native grid) or
        on label maps subsampled to ``shape`` (published). Folding and SDlogJ are always those of
        the field on ``shape``, the one the model produced.
    refine : callable, optional
        Per-pair refinement ``refine(moving, fixed, flow) -> flow`` (see
        :func:`engine.scoring.register_split`); ``summary.json`` then also holds the network's own
        scores under ``network``.
    cuda_graphs : bool
        Replay the model's calls from CUDA graphs on a GPU (:mod:`models.graphed`).

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
    if score_on not in SCORE_ON:
        raise UserError(f"score_on must be one of {', '.join(SCORE_ON)}, got {score_on!r}")
    device = torch.device(context["device"])
    full = split.shape
    label_shape = full if score_on == "native" else tuple(shape)
    data = DeviceSplit(split, shape, device, antialias, label_shape=label_shape)
    # HD95 in full-resolution voxels: one label-grid step spans (N_full - 1) / (N_label - 1) of them.
    spacing = [(f - 1) / (e - 1) if e > 1 else 1.0 for f, e in zip(full, label_shape)]

    # With refinement every panel and the box plot show the refined field: say so in their titles.
    refined = f" (refined, {context['refine_steps']} steps)" if refine is not None else ""

    def draw(index, pair):
        fig = registration_panel(pair["fixed"], pair["moving"], pair["warped"], to_pixel_units(pair["flow"])[0],
                                 pair["jacobian"], title=_panel_title(split, index, pair["scores"]) + refined)
        save_figure(fig, out_dir / f"panel_pair{index}.png")

    metrics = register_split(model, data, split.label_ids, batch_size, spacing, panel_pairs(len(data), n_panels),
                             draw, progress, desc=f"{context['checkpoint']} {'x'.join(map(str, shape))}", refine=refine,
                             cuda_graphs=cuda_graphs)
    del data  # free the resized split (device memory) before the next size
    if metrics.labelled.any():
        title = (f"{context['split']} split, {int(metrics.labelled.sum())} pairs, {context['checkpoint']} at "
                 f"{'x'.join(map(str, shape))}{refined}")
        save_figure(dice_boxplot(metrics.dice_before[metrics.labelled], metrics.dice_after[metrics.labelled],
                                 split.label_ids, split.label_names, title=title), out_dir / "dice_boxplot.png")
    write_per_pair_csv(out_dir / "per_pair.csv", metrics, split)
    write_per_label_csv(out_dir / "per_label.csv", metrics, split.label_ids, split.label_names)
    # Headline numbers first, then what was evaluated, then how it ran.
    head = {k: context[k] for k in ("exp_num", "dim", "checkpoint", "split") if k in context}
    summary = {**head, "eval_size": int(size), "eval_shape": list(shape), "full_shape": list(full),
               "score_on": score_on, "label_shape": list(label_shape),
               **summarize(metrics, split.label_ids), **{k: v for k, v in context.items() if k not in head},
               "batch_size": int(batch_size), "created": xp.now(), "wall_time_s": time.perf_counter() - started}
    if metrics.graphs is not None:
        summary["cuda_graph_use"] = metrics.graphs
    write_json(out_dir / "summary.json", summary)
    return summary


def _load_experiment_config(dim, exp_num):
    folder = xp.experiment_dir(dim, exp_num)
    path = folder / "config.json"
    return folder, resolve_config(read_json(path), dim, source=str(path))


def _trained_config(config, info, dim, exp_num, folder):
    """(the config the loaded weights were trained with, the data_config keys config.json changed since).

    Weights and checkpoints carry the config they were trained with; ``config.json`` may have
    been edited since (a restart would then train on the edit). The training subjects, the
    input preparation (``antialias``) and ``--refine``'s loss are the trained ones; the
    evaluated split stays ``config.json``'s, with a notice. A new ``root`` for the same dataset
    is data that moved, not an edit. Weights written before 2026-11-30 carry no config:
    ``config.json``'s is taken, and the edited keys are None (unknown).
    """
    trained = trained_config(info.get("config"), dim, source=info["path"])
    if trained is None:
        return config, None
    now, then = config["data_config"], trained["data_config"]
    if now["dataset"] == then["dataset"] and now.get("root") != then.get("root"):
        # The same data moved (a change a resume accepts): its subjects are listed where they are now.
        then = {**then, "root": now.get("root")}
        trained = {**trained, "data_config": then}
    edited = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
    if edited:
        tag = data_tag(now, then)
        print(f"notice: data_config.{', data_config.'.join(edited)} in {folder / 'config.json'} changed after "
              f"experiment {exp_num}'s {info['checkpoint']} weights were trained ({edited[0]}: {now.get(edited[0])!r} "
              f"now, {then.get(edited[0])!r} then); the evaluated split is read from config.json, the training "
              f"subjects and the image resizing from the weights' own config, and the outputs of evaluating "
              f"config.json's data go to folders tagged _{tag}", file=sys.stderr)
    return trained, edited


def _data_from(config_file, config, dim, exp_num, progress):
    """The ``data_config`` to evaluate on and its folder tag: ``config_file``'s, or the stored one."""
    stored = config["data_config"]
    if config_file is None:
        return stored, None, None
    other, path = load_config(config_file, dim)
    tag = data_tag(other["data_config"], stored)
    if progress:
        where = f"dataset {other['data_config']['dataset']}" + (f" at {other['data_config']['root']}"
                                                               if other["data_config"]["root"] else "")
        note = "the same data as its stored config" if tag is None else f"output folders tagged _{tag}"
        print(f"notice: evaluating experiment {exp_num} on the data_config of {path} ({where}; {note})",
              file=sys.stderr)
    return other["data_config"], tag, str(path)


def evaluate_experiment(dim, exp_num, ckpt_epoch=None, sizes=None, split="test", gpu_num=0, batch_size=None,
                        n_panels=N_PANELS, progress=True, score_on="native", config_file=None, refine=0,
                        refine_lr=DEFAULT_REFINE_LR, fold_repair=None, cuda_graphs=False):
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
    score_on : {"native", "eval"}
        Label maps that Dice and HD95 score (see :func:`evaluate_at`); default ``native``.
    config_file : path-like, optional
        A config whose ``data_config`` replaces the stored one for this evaluation only (other
        data, or the same data at another path); the outputs then go to folders tagged with
        :func:`data_tag`, never to those of the experiment's own data.
    refine : int
        Per-pair refinement steps (:mod:`engine.refine`; 0: off), with the experiment's own loss
        weights and a folding penalty; outputs go to ``_refine<K>`` folders.
    refine_lr : float
        Refinement Adam step, in pixels.
    fold_repair : {"on", "off"}, optional
        Override the trained FNOReg's ``fold_repair`` (:func:`engine.checkpoint.set_fold_repair`);
        outputs go to ``_repair<on|off>`` folders and the summaries record the setting that ran.
    cuda_graphs : bool
        On a GPU, replay the model's calls from CUDA graphs (:mod:`models.graphed`; opt-in). The
        summaries record ``cuda_graphs``; the figures are the eager ones to float rounding.

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
    if score_on not in SCORE_ON:
        raise UserError(f"--score_on must be one of {', '.join(SCORE_ON)}, got {score_on!r}")
    data_config, tag, config_path = _data_from(config_file, config, dim, exp_num, progress)
    if data_config["splits"].get(split) is None:
        where = config_path or folder / "config.json"
        raise ConfigError(f"experiment {exp_num} has no {split} split (data_config.splits.{split} is null in "
                          f"{where}); set an index range there or evaluate another --split")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch_size must be at least 1, got {batch_size}")
    if refine < 0 or not refine_lr > 0:
        raise UserError(f"--refine must be >= 0 and --refine_lr positive, got {refine} and {refine_lr}")
    tc = config["train_config"]
    batch_size = batch_size or tc["val_batch_size"] or tc["batch_size"]
    device = select_device(gpu_num)
    model, info = load_model(folder, ckpt_epoch, device)
    info = set_fold_repair(model, info, fold_repair)
    cuda_graphs = cuda_graphs_on(cuda_graphs, device)
    trained, edited = _trained_config(config, info, dim, exp_num, folder)
    trained_data = trained["data_config"]
    if edited and config_file is None:  # never into the folders of the data the weights were trained on
        tag = data_tag(data_config, trained_data)
    # Images are downsampled as in training, whatever another data_config says: the model's input
    # preparation belongs to the experiment, not to the data.
    antialias = trained_data["antialias"]
    if data_config["antialias"] != antialias:
        print(f"notice: antialias {str(data_config['antialias']).lower()} in {config_path or folder / 'config.json'} "
              f"is not used; images are resized as experiment {exp_num} was trained (antialias "
              f"{str(antialias).lower()})", file=sys.stderr)
    # Another data_config, or an edited config.json, may move the evaluated split over the
    # subjects the model was trained on: those of the data_config the weights were trained with.
    leaked = shared_subjects(trained_data, "train", data_config, split, dim)
    if leaked:
        print(f"warning: {len(leaked)} subject(s) of the {split} split are training subjects of experiment "
              f"{exp_num} (e.g. {leaked[0]}); its scores are not held out", file=sys.stderr)
    elif leaked is None:  # e.g. the training data's folder moved: say so rather than pass silently
        print(f"note: the training subjects of experiment {exp_num} cannot be listed (its training "
              f"data_config, dataset {trained_data['dataset']} at {trained_data['root']}); the {split} split "
              "was not checked for them", file=sys.stderr)
    data = load_split(data_config, dim, split)
    if len(data.pairs) == 0:
        raise ConfigError(f"the {split} split of experiment {exp_num} has no pairs; widen data_config.splits.{split}")
    context = {"exp_num": exp_num, "dim": dim, "model_name": config["model_name"],
               "model_config": info["model_config"],
               "n_params": count_parameters(model), "checkpoint": info["checkpoint"], "epoch": info["epoch"],
               "checkpoint_path": info["path"], "partial_epoch_steps": info["partial_epoch_steps"],
               "train_size": info["train_size"], "split": split,
               "dataset": data_config["dataset"], "data_root": data_config["root"],
               "label_scheme": data_config["label_scheme"], "data_tag": tag, "config_file": config_path,
               "data_config": data_config, "training_subjects_in_split": None if leaked is None else len(leaked),
               "antialias": antialias, "data_config_edited_since_training": edited,
               "device": str(device), "versions": xp.software_versions(), "git_commit": xp.git_commit(),
               "refine_steps": refine, "refine_lr": refine_lr if refine else None,
               "fold_repair_override": info.get("fold_repair_override"), "cuda_graphs": cuda_graphs}
    loss = refine_loss(RegistrationLoss.from_config(trained["train_config"]))  # the loss it was trained with
    if refine:
        context["refine_loss"] = {k: getattr(loss, k) for k in ("similarity", "reg_param", "jac_param", "ncc_window")}

    def refiner(moving, fixed, flow):
        return refine_field(moving, fixed, flow, refine, loss, refine_lr, repair=getattr(model, "fold_repair", False))
    shapes = evaluation_shapes(sizes, data.shape)
    if hasattr(model, "check_input_shape"):  # every size is checked before any output is written
        for _, shape in shapes:
            model.check_input_shape(shape)
    summaries = []
    for size, shape in shapes:
        out_dir = output_folder(folder, info["checkpoint"], size, split, tag, score_on, refine, fold_repair)
        summaries.append(evaluate_at(model, data, size, shape, out_dir, context, batch_size, n_panels, progress,
                                     antialias, score_on, refiner if refine else None, cuda_graphs))
        if progress:
            print(f"wrote {out_dir}", file=sys.stderr)
    return summaries


def evaluate_main(dim, argv=None):
    """Entry point shared by ``evaluate_2d.py`` and ``evaluate_3d.py``: evaluate, then print the table."""
    args = evaluation_parser(dim).parse_args(argv)
    summaries = evaluate_experiment(dim, args.exp_num, args.ckpt_epoch, args.size, args.split, args.gpu_num,
                                    args.batch_size, args.n_panels, score_on=args.score_on,
                                    config_file=args.config_file, refine=args.refine, refine_lr=args.refine_lr,
                                    fold_repair=args.fold_repair, cuda_graphs=args.cuda_graphs)
    print_report(dim, summaries)
    return 0


__all__ = ["SCORE_ON", "data_tag", "evaluate_at", "evaluate_experiment", "evaluate_main", "evaluation_parser",
           "evaluation_shapes", "output_folder", "panel_pairs"]
