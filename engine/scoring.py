"""Registering a split pair by pair and scoring every pair: the loop of an evaluation.

:func:`register_split` runs the model over a :class:`engine.batches.DeviceSplit` in batches and
returns :class:`PairMetrics` (Dice per label before and after, HD95, folding, SDlogJ, time per
pair); :func:`timed_registration` is the synchronised forward + warp that the time per pair
measures (also used by ``register.py``). The protocol is described in :mod:`engine.evaluation`.

Grids: the model runs at the split's shape and folding and SDlogJ are computed on the field it
produced there. When the split's label maps are held at another shape (the native one,
``DeviceSplit(label_shape=...)``), the field is resampled to the label grid (linearly, corners
aligned; normalised units need no rescaling) and the native moving labels are warped with it, so
Dice and HD95 compare the same label sets at every evaluation size.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from data.resize import resize_images
from engine.metrics import dice_per_label, folding_percent, hd95_per_label, jacobian_determinant, sdlogj
from models import warp
from models.graphed import inference_session
from utils.device import synchronize


@dataclass
class PairMetrics:
    """Per-pair results of one evaluation (pairs in the split's order).

    Attributes
    ----------
    dice_before, dice_after, hd95 : numpy.ndarray
        (n_pairs, n_labels) float64; NaN for labels absent from both maps and for pairs
        without label maps. A label in only one map scores Dice 0 and the HD95 penalty of
        :func:`engine.metrics.hd95_per_label` (the grid's diagonal).
    folding, sdlogj, time_s : numpy.ndarray
        (n_pairs,) float64: % of pixels with J < 0, SDlogJ, seconds of forward + warp.
    labelled : numpy.ndarray
        (n_pairs,) bool: both subjects of the pair have a label map.
    hd95_one_sided : numpy.ndarray
        (n_pairs,) int: labels of the pair whose HD95 is that penalty.
    network : dict, optional
        With refinement (``--refine K``): the network's own field before refinement, scored the
        same way: ``dice_after`` (n_pairs, n_labels), ``folding``, ``sdlogj``, ``time_s`` (n_pairs,).
        The main attributes then score the refined field, and ``time_s`` includes refinement.
    graphs : dict, optional
        With ``cuda_graphs`` on CUDA: ``replays`` (calls a CUDA graph answered, warm-up included)
        and ``eager`` (why an input shape ran eagerly), so a fallback is never silent.
    """

    dice_before: np.ndarray
    dice_after: np.ndarray
    hd95: np.ndarray
    folding: np.ndarray
    sdlogj: np.ndarray
    time_s: np.ndarray
    labelled: np.ndarray
    hd95_one_sided: np.ndarray = None
    network: dict = None
    graphs: dict = None

    @staticmethod
    def pair_score(per_label):
        """Mean over the labels of each pair, skipping NaN; NaN where a pair has none."""
        finite = np.isfinite(per_label)
        count = finite.sum(1)
        total = np.where(finite, per_label, 0.0).sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _forward_warp(model, moving, fixed):
    return (flow := model(moving, fixed)), warp(moving, flow)


def field_on_grid(flow, shape):
    """A normalised displacement ``flow`` (B, d, *spatial) resampled to ``shape``.

    Linear (bilinear / trilinear) interpolation with corners aligned, the warp's convention, so a
    value still names the same anatomical offset; normalised units need no rescaling. ``flow``
    itself when it already has ``shape``.
    """
    return resize_images(flow, tuple(shape))


def _refined(refine, batch, flow):
    flow = refine(batch.moving, batch.fixed, flow)
    return flow, warp(batch.moving, flow)


def timed(fn, device):
    """``(fn(), seconds)``, synchronised on ``device`` before and after, so a GPU's queued work counts."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def timed_registration(model, moving, fixed, device):
    """Displacement, warped image and seconds of ``model`` forward + warp, synchronised on ``device``."""
    (flow, warped), seconds = timed(lambda: _forward_warp(model, moving, fixed), device)
    return flow, warped, seconds


@torch.inference_mode()
def register_split(model, data, label_ids, batch_size, hd95_spacing=None, panels=(), on_panel=None,
                   progress=True, desc="pairs", refine=None, cuda_graphs=False):
    """Register every pair of ``data`` and score it.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode, on ``data.device``.
    data : engine.batches.DeviceSplit
        The split at the evaluation shape; its label maps may be at another shape (the native
        one), onto which each field is resampled before it warps them.
    label_ids : sequence of int
        Labels to score (background excluded).
    batch_size : int
        Pairs per forward pass.
    hd95_spacing : sequence of float, optional
        Voxel size per axis of the label grid for HD95 (default 1).
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
    refine : callable, optional
        ``refine(moving, fixed, flow) -> flow``, per-pair refinement (:mod:`engine.refine`) applied
        to each batch's field; the network's own field is scored too (``PairMetrics.network``).
    cuda_graphs : bool
        On CUDA, replay the model's calls from CUDA graphs (:mod:`models.graphed`); the model's
        own eager call elsewhere.

    Returns
    -------
    PairMetrics

    Notes
    -----
    Runs inside :func:`models.graphed.inference_session`: each spectral layer rebuilds its weight
    once per input size instead of once per batch; the cache (and any graph) is freed on return.
    """
    with inference_session(model, cuda_graphs) as run:
        metrics = _register_split(run, data, label_ids, batch_size, hd95_spacing, panels, on_panel, progress, desc,
                                  refine)
        if run is not model:
            metrics.graphs = run.usage()
        return metrics


def _score_field(flow, batch, label_ids):
    """Jacobian, folding and SDlogJ of one batch's field and, with label maps, the warped labels
    (on the label grid, the field resampled when it differs) and Dice after, per label."""
    jac = jacobian_determinant(flow)
    scores = {"jacobian": jac, "folding": folding_percent(jacobian=jac).cpu().numpy(),
              "sdlogj": sdlogj(jacobian=jac).cpu().numpy(), "warped_labels": None}
    if batch.moving_labels is not None:
        scores["labelled"] = batch.has_labels.cpu().numpy()
        # Integer maps: nearest neighbour.
        scores["warped_labels"] = warp(batch.moving_labels, field_on_grid(flow, batch.moving_labels.shape[2:]))
        scores["dice_after"] = dice_per_label(scores["warped_labels"], batch.fixed_labels, label_ids).cpu().numpy()
    return scores


def _register_split(model, data, label_ids, batch_size, hd95_spacing, panels, on_panel, progress, desc, refine):
    n, n_labels = len(data), len(label_ids)
    out = PairMetrics(*(np.full((n, n_labels), np.nan) for _ in range(3)),
                      *(np.zeros(n) for _ in range(3)), labelled=np.zeros(n, dtype=bool),
                      hd95_one_sided=np.zeros(n, dtype=np.int64))
    if refine is not None:
        out.network = {"dice_after": np.full((n, n_labels), np.nan), "folding": np.zeros(n), "sdlogj": np.zeros(n),
                       "time_s": np.zeros(n)}
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
            if refine is not None:
                net, scores = out.network, _score_field(flow, batch, label_ids)
                net["time_s"][rows] = seconds / len(rows)
                net["folding"][rows], net["sdlogj"][rows] = scores["folding"], scores["sdlogj"]
                if "labelled" in scores:
                    net["dice_after"][rows[scores["labelled"]]] = scores["dice_after"][scores["labelled"]]
                bar.set_postfix_str(f"{dice_so_far}refining", refresh=True)
                (flow, warped), refine_s = timed(lambda: _refined(refine, batch, flow), device)
                seconds += refine_s
            out.time_s[rows] = seconds / len(rows)
            scores = _score_field(flow, batch, label_ids)
            jac, warped_labels = scores["jacobian"], scores["warped_labels"]
            out.folding[rows], out.sdlogj[rows] = scores["folding"], scores["sdlogj"]
            if "labelled" in scores:
                labelled = scores["labelled"]
                out.labelled[rows] = labelled
                before = dice_per_label(batch.moving_labels, batch.fixed_labels, label_ids).cpu().numpy()
                out.dice_before[rows[labelled]] = before[labelled]
                out.dice_after[rows[labelled]] = scores["dice_after"][labelled]
            for k, row in enumerate(rows):
                if out.labelled[row]:
                    bar.set_postfix_str(f"{dice_so_far}HD95", refresh=True)
                    hd, one_sided = hd95_per_label(warped_labels[k : k + 1], batch.fixed_labels[k : k + 1],
                                                   label_ids, hd95_spacing, return_one_sided=True)
                    out.hd95[row], out.hd95_one_sided[row] = hd[0], one_sided[0].sum()
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


__all__ = ["PairMetrics", "field_on_grid", "register_split", "timed", "timed_registration"]
