"""The classical reference of the resolution benchmark: ANTs SyN / SyNCC on the same test pairs.

Used by :mod:`benchmarks.bench_resolution` only when ``antspyx`` is importable (an optional extra,
never a requirement); scored like ``evaluate_2d.py``'s default (Dice and HD95 on the native
label maps).
"""

import math
import sys
import time

import numpy as np
import torch

from benchmarks.common import shape_text
from engine.reports import mean_std


def import_ants():
    """The ``ants`` module of antspyx, or None when it is not installed (it is optional)."""
    try:
        import ants
    except ImportError:
        return None
    return ants


def ants_register_split(ants, data_cfg, sizes, transforms, max_pairs=None, progress=True):
    """Register the test pairs with ANTs at each size; returns {transform: {size: summary}}.

    Images are registered at the evaluation size with a voxel spacing of ``(N_full - 1) /
    (N_eval - 1)`` per axis, so physical space is the native grid (corners aligned, as the
    project's resizing); the transforms are then applied to the native moving label maps
    (nearest neighbour), so Dice and HD95 score the native labels at every size, as
    ``evaluate_2d.py``'s default ``--score_on native``. Folding and SDlogJ are those of the
    deformable part's Jacobian determinant on the evaluation grid (an affine stage with a
    positive determinant changes neither), computed by the project's own functions
    (:func:`engine.metrics.folding_percent`, :func:`engine.metrics.sdlogj`). Time per pair is the
    wall time of ``ants.registration``: the mean in ``time_per_pair_s``, as for the networks,
    and the median in ``time_per_pair_median_s``.
    """
    from data.dataset import load_split
    from data.resize import resize_images, shape_for_size
    from engine.metrics import dice_per_label, folding_percent, hd95_per_label, sdlogj

    split = load_split(data_cfg, 2, "test")
    pairs = split.pairs.tolist()[: max_pairs or None]
    full = split.shape
    out = {}
    for transform in transforms:
        out[transform] = {}
        for size in sizes:
            shape = shape_for_size(size, full)
            images = resize_images(split.images, shape).numpy()
            spacing = tuple((f - 1) / (e - 1) for f, e in zip(full, shape))
            rows = []
            for k, (m, f) in enumerate(pairs):
                fixed = ants.from_numpy(np.ascontiguousarray(images[f, 0], dtype=np.float32), spacing=spacing)
                moving = ants.from_numpy(np.ascontiguousarray(images[m, 0], dtype=np.float32), spacing=spacing)
                started = time.perf_counter()
                reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=transform)
                seconds = time.perf_counter() - started
                jac = torch.from_numpy(np.asarray(
                    ants.create_jacobian_determinant_image(fixed, reg["fwdtransforms"][0]).numpy(), dtype=np.float64))
                row = {"time_s": seconds, "folding": float(folding_percent(jacobian=jac[None])[0]),
                       "sdlogj": float(sdlogj(jacobian=jac[None])[0]),
                       "dice_before": math.nan, "dice": math.nan, "hd95": math.nan}
                if split.labels is not None and bool(split.has_labels[m]) and bool(split.has_labels[f]):
                    lab_m = split.labels[m, 0].numpy().astype(np.float32)
                    lab_f = split.labels[f, 0]
                    warped = ants.apply_transforms(fixed=ants.from_numpy(lab_f.numpy().astype(np.float32)),
                                                   moving=ants.from_numpy(lab_m),
                                                   transformlist=reg["fwdtransforms"], interpolator="nearestNeighbor")
                    warped = torch.from_numpy(np.rint(np.asarray(warped.numpy())).astype(np.int64))[None, None]
                    fixed_l = lab_f.long()[None, None]
                    before = split.labels[m, 0].long()[None, None]
                    row["dice_before"] = float(torch.nanmean(dice_per_label(before, fixed_l, split.label_ids)))
                    row["dice"] = float(torch.nanmean(dice_per_label(warped, fixed_l, split.label_ids)))
                    row["hd95"] = float(np.nanmean(hd95_per_label(warped, fixed_l, split.label_ids)))
                rows.append(row)
                if progress:
                    print(f"  ANTs {transform} {shape_text(shape)} pair {k + 1}/{len(pairs)}: Dice {row['dice']:.3f}, "
                          f"{seconds:.2f} s", file=sys.stderr, flush=True)
            out[transform][size] = _ants_summary(rows, size, shape, full)
    return out


def _ants_summary(rows, size, shape, full):
    s = {"eval_size": size, "eval_shape": list(shape), "full_shape": list(full), "n_pairs": len(rows),
         "score_on": "native"}
    for key, name in (("dice_before", "initial_dice"), ("dice", "dice"), ("folding", "folding_percent"),
                      ("sdlogj", "sdlogj"), ("hd95", "hd95")):
        s[f"{name}_mean"], s[f"{name}_std"] = mean_std([r[key] for r in rows])
    times = [r["time_s"] for r in rows]
    s["time_per_pair_s"] = mean_std(times)[0]  # the mean, as engine.reports gives the networks'
    s["time_per_pair_median_s"] = float(np.median(times)) if rows else None
    return s
