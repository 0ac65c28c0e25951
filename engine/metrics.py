"""Registration metrics (DESIGN.md A.6): Dice, Jacobian determinant, folding, SDlogJ, HD95.

Conventions
-----------
- Label maps are integer tensors (B, 1, *spatial); metrics take an explicit ``label_ids`` list
  (background excluded). A label absent from *both* maps of a pair has an undefined score and
  is NaN in per-label results; pair means skip NaN (``nanmean``), so a 2D slice is not penalised
  for structures it does not cut. A label present in only one map scores Dice 0.
- Displacements are normalised fields (B, d, *spatial) as produced by the models; the Jacobian
  is that of the map ``x + u(x)`` in pixel units, every channel scaled by its own
  ``(N_c - 1) / 2``, with central differences inside and one-sided ones at the border
  (``torch.gradient``).
- SDlogJ is the standard deviation of ``log(clamp(J, 1e-9))`` over all pixels, so folded
  pixels count as very negative log-Jacobians instead of being dropped. Not the scale of
  Learn2Reg's evaluation script, which takes ``log(clip(J + 3, 1e-9, 1e9))`` (the shift by 3
  keeps folds finite but compresses every value), so published Learn2Reg-style SDlogJ figures
  are not comparable with these.
- A non-finite determinant (a diverged field: NaN or infinite displacements) counts as folded,
  and makes that pair's SDlogJ NaN: a broken field must not look fold-free.
"""

import numpy as np
import torch
from scipy.spatial import cKDTree

from utils.errors import ShapeError
from utils.fields import check_same_spatial, check_spatial, jacobian_determinant


def _check_labels(a, b):
    check_spatial(a, "label map", channels=1)
    check_same_spatial(a, "first label map", b, "second label map")
    if a.is_floating_point() or b.is_floating_point():
        raise ShapeError("label maps must hold integers; cast them (e.g. .long()) after checking they are integral")


def dice_per_label(a, b, label_ids):
    """Dice of every label in ``label_ids`` for every pair in the batch.

    One joint histogram per batch (``bincount``) gives all overlaps at once.

    Parameters
    ----------
    a, b : torch.Tensor
        (B, 1, *spatial) integer label maps.
    label_ids : sequence of int
        Non-negative labels to score.

    Returns
    -------
    torch.Tensor
        (B, len(label_ids)) float64; NaN where a label is absent from both maps.
    """
    _check_labels(a, b)
    ids = torch.as_tensor(list(label_ids), dtype=torch.long, device=a.device)
    if ids.numel() == 0 or ids.min() < 0:
        raise ValueError("label_ids must be a non-empty list of non-negative labels")
    batch = a.shape[0]
    # int32 keys halve the memory traffic of the histogram (labels are small integers).
    a_flat = a.reshape(batch, -1).int()
    b_flat = b.reshape(batch, -1).int()
    low = min(int(a_flat.min()), int(b_flat.min()))
    if low < 0:
        raise ValueError(f"label maps must be non-negative, found {low}")
    n = max(int(a_flat.max()), int(b_flat.max()), int(ids.max())) + 1
    if batch * n * n >= 2**31:
        raise ValueError(f"label values up to {n - 1} are too large for a joint histogram; relabel to 0..K")
    keys = a_flat * n + b_flat
    if batch > 1:
        keys += (torch.arange(batch, device=a.device, dtype=torch.int32) * (n * n)).unsqueeze(1)
    joint = torch.bincount(keys.reshape(-1), minlength=batch * n * n).reshape(batch, n, n).double()
    inter = joint[:, ids, ids]
    total = joint.sum(2)[:, ids] + joint.sum(1)[:, ids]
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.full_like(total, float("nan")))


def mean_dice(a, b, label_ids):
    """Pair Dice: mean over the labels present in at least one map. Returns (B,) float64."""
    return torch.nanmean(dice_per_label(a, b, label_ids), dim=1)


def folding_percent(flow=None, jacobian=None):
    """Percentage of pixels/voxels whose Jacobian determinant is negative or not finite, per pair: (B,).

    A NaN determinant compares false with everything, so a diverged field would otherwise score
    0 % folding; here every non-finite pixel counts as folded.
    """
    jac = jacobian_determinant(flow) if jacobian is None else jacobian
    return ((jac < 0) | ~torch.isfinite(jac)).flatten(1).double().mean(1) * 100.0


def sdlogj(flow=None, jacobian=None, floor=1e-9):
    """Standard deviation of the log Jacobian determinant, per pair: (B,).

    Determinants below ``floor`` (folds) are clamped to it before the logarithm; a field with a
    non-finite determinant gets NaN (undefined), which the reports count rather than drop.
    """
    jac = jacobian_determinant(flow) if jacobian is None else jacobian
    return torch.log(jac.double().clamp_min(floor)).flatten(1).std(1)


def surface_mask(labels):
    """Boundary voxels of every label at once: a voxel whose face neighbour has another label.

    Voxels on the image border count as boundary (the outside is treated as another label).

    Parameters
    ----------
    labels : torch.Tensor
        (*spatial) integer label map.

    Returns
    -------
    torch.Tensor
        (*spatial) bool.
    """
    edge = torch.zeros_like(labels, dtype=torch.bool)
    for axis, n in enumerate(labels.shape):
        if n > 1:
            change = labels.narrow(axis, 1, n - 1) != labels.narrow(axis, 0, n - 1)
            edge.narrow(axis, 1, n - 1).logical_or_(change)
            edge.narrow(axis, 0, n - 1).logical_or_(change)
        edge.narrow(axis, 0, 1).fill_(True)
        edge.narrow(axis, n - 1, 1).fill_(True)
    return edge


def hd95_per_label(a, b, label_ids, spacing=None, return_one_sided=False):
    """95th-percentile Hausdorff distance of every label for every pair.

    The standard definition (the surface-distance package's ``compute_robust_hausdorff``, MONAI's
    ``compute_hausdorff_distance(percentile=95)``): the larger of the two directed distances'
    95th percentiles, surface voxels of ``a`` to the surface of ``b`` and back (surface voxels
    from :func:`surface_mask`, exact Euclidean nearest neighbours from a KD-tree). Pooling both
    directions before the percentile, as this project did before 2026-11-30, is never larger and
    can be much smaller when one surface has a spur the other lacks.

    A label absent from both maps gives NaN (nothing to score). A label in only one map (a
    structure the registration erased, or one it created) gets the grid's diagonal, the largest
    distance the grid can hold, in the same units: its distance to an empty surface is
    undefined (infinite in the surface-distance package), and leaving it out would let a
    registration improve its HD95 by erasing structures, while Dice scores them 0.

    Parameters
    ----------
    a, b : torch.Tensor
        (B, 1, *spatial) integer label maps.
    label_ids : sequence of int
        Labels to score.
    spacing : sequence of float, optional
        Voxel size per axis (default 1: distances in voxels).
    return_one_sided : bool
        Also return which scores are the diagonal penalty of a one-sided label.

    Returns
    -------
    numpy.ndarray
        (B, len(label_ids)) float64; with ``return_one_sided`` also a bool array of that shape.
    """
    _check_labels(a, b)
    d = a.dim() - 2
    scale = np.ones(d) if spacing is None else np.asarray(spacing, dtype=np.float64)
    if scale.shape != (d,):
        raise ShapeError(f"spacing must have {d} entries, got {spacing!r}")
    diagonal = float(np.sqrt(np.sum(((np.asarray(a.shape[2:]) - 1) * scale) ** 2)))
    out = np.full((a.shape[0], len(label_ids)), np.nan)
    one_sided = np.zeros(out.shape, dtype=bool)
    for i in range(a.shape[0]):
        surfaces = [_surface_points_by_label(m[i, 0].cpu(), scale) for m in (a, b)]
        for k, label in enumerate(label_ids):
            pts_a, pts_b = (s.get(int(label)) for s in surfaces)
            if pts_a is None and pts_b is None:
                continue
            if pts_a is None or pts_b is None:
                out[i, k], one_sided[i, k] = diagonal, True
                continue
            d_ab = cKDTree(pts_b).query(pts_a, workers=-1)[0]
            d_ba = cKDTree(pts_a).query(pts_b, workers=-1)[0]
            out[i, k] = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    return (out, one_sided) if return_one_sided else out


def _surface_points_by_label(labels, scale):
    """{label: (M, d) scaled coordinates of its surface voxels}, from one pass over the map."""
    edge = surface_mask(labels)
    coords = torch.nonzero(edge)
    values = labels[edge].long()
    order = torch.argsort(values, stable=True)
    coords, values = coords[order].numpy() * scale, values[order]
    uniq, counts = torch.unique_consecutive(values, return_counts=True)
    bounds = np.concatenate([[0], np.cumsum(counts.numpy())])
    return {int(v): coords[bounds[k] : bounds[k + 1]] for k, v in enumerate(uniq.tolist())}
