"""Metrics: Dice, Jacobian determinant, folding, SDlogJ, HD95."""

import numpy as np
import pytest
import torch

from engine.metrics import (
    dice_per_label,
    folding_percent,
    hd95_per_label,
    jacobian_determinant,
    mean_dice,
    sdlogj,
    surface_mask,
)
from models import identity_grid, to_normalised_units
from utils.errors import ShapeError


@pytest.mark.parametrize("dim", [2, 3])
def test_dice_identical_and_disjoint(dim):
    torch.manual_seed(0)
    a = torch.randint(0, 5, (2, 1) + (10,) * dim)
    assert torch.all(mean_dice(a, a, [1, 2, 3, 4]) == 1)
    left = torch.zeros((1, 1) + (10,) * dim, dtype=torch.long)
    right = left.clone()
    left[..., :5] = 1
    right[..., 5:] = 1
    assert mean_dice(left, right, [1]).item() == 0


def test_dice_values_and_absent_labels():
    a = torch.tensor([[[[1, 1, 2, 0]]]])
    b = torch.tensor([[[[1, 0, 2, 2]]]])
    d = dice_per_label(a, b, [1, 2, 3, 5])
    assert d[0, 0].item() == pytest.approx(2 / 3)
    assert d[0, 1].item() == pytest.approx(2 / 3)
    assert torch.isnan(d[0, 2]) and torch.isnan(d[0, 3])  # absent from both maps
    assert mean_dice(a, b, [1, 2, 3]).item() == pytest.approx(2 / 3)
    c = torch.tensor([[[[3, 0, 0, 0]]]])
    assert dice_per_label(c, b, [3])[0, 0] == 0  # present in one map only


def test_dice_batched_matches_single():
    torch.manual_seed(1)
    a, b = torch.randint(0, 7, (2, 3, 1, 9, 11))
    batched = dice_per_label(a, b, range(1, 7))
    for i in range(3):
        torch.testing.assert_close(batched[i], dice_per_label(a[i : i + 1], b[i : i + 1], range(1, 7))[0])


def test_dice_rejects_float_labels():
    with pytest.raises(ShapeError, match="integers"):
        dice_per_label(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), [1])


@pytest.mark.parametrize("dim", [2, 3])
def test_a_non_finite_field_counts_as_folded(dim):
    # A NaN determinant compares false with 0: without care a diverged field scores 0 % folding.
    flow = torch.zeros((3, dim) + (7,) * dim)
    flow[1] = float("nan")
    flow[(2, 0) + (3,) * dim] = float("inf")  # one pixel: its finite differences reach its neighbours
    folding, logj = folding_percent(flow), sdlogj(flow)
    assert folding[0] == 0 and folding[1] == 100 and 0 < folding[2] < 100
    assert logj[0] == 0 and torch.isnan(logj[1:]).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_identity_has_unit_jacobian_and_no_folds(dim):
    flow = torch.zeros((1, dim) + (9,) * dim)
    jac = jacobian_determinant(flow)
    assert torch.allclose(jac, torch.ones_like(jac))
    assert folding_percent(flow).item() == 0
    assert sdlogj(flow).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("dim", [2, 3])
def test_uniform_scaling_jacobian_uses_every_channel(dim):
    # x -> 1.5 x in pixel units along every axis (axes of different lengths): J = 1.5^d.
    shape = (9, 13, 17)[:dim]
    flow = 0.5 * identity_grid(shape).unsqueeze(0)
    jac = jacobian_determinant(flow)
    torch.testing.assert_close(jac, torch.full_like(jac, 1.5**dim))


@pytest.mark.parametrize("dim", [2, 3])
def test_known_fold_is_detected(dim):
    # u_0 = -3 x_0 (pixels) on a band of rows: the map x_0 -> -2 x_0 reverses orientation there.
    shape = (20,) * dim
    flow_px = torch.zeros((1, dim) + shape)
    coords = torch.arange(20, dtype=torch.float32).view(-1, *([1] * (dim - 1)))
    band = (coords >= 5) & (coords < 10)
    flow_px[0, 0] = torch.where(band, -3 * (coords - 5), torch.zeros(())).expand(shape) + torch.where(
        coords >= 10, torch.full((), -15.0), torch.zeros(())
    ).expand(shape)
    flow = to_normalised_units(flow_px)
    fold = folding_percent(flow).item()
    # Central differences: rows 5..9 plus the two edge rows see negative slopes; 5-7 of 20 rows.
    assert 25 <= fold <= 35
    assert sdlogj(flow).item() > 1


def test_surface_mask():
    labels = torch.zeros(7, 7, dtype=torch.long)
    labels[2:5, 2:5] = 1
    edge = surface_mask(labels)
    assert edge[3, 3].item() is False  # interior of the square
    assert edge[2, 2].item() and edge[2, 3].item()
    assert edge[0, 3].item()  # image border


def test_hd95_known_shift():
    a = torch.zeros(1, 1, 30, 30, 30, dtype=torch.long)
    a[0, 0, 10:20, 10:20, 10:20] = 1
    b = torch.roll(a, 3, dims=2)
    h = hd95_per_label(a, b, [1, 2])
    assert h[0, 0] == pytest.approx(3.0)
    assert np.isnan(h[0, 1])
    assert hd95_per_label(a, a, [1])[0, 0] == 0
    assert hd95_per_label(a, b, [1], spacing=(2.0, 1.0, 1.0))[0, 0] == pytest.approx(6.0)


def _surface(labels, label):
    return torch.nonzero(surface_mask(labels) & (labels == label)).double()


def _directed_p95(pa, pb):
    """95th percentile of the distances from the points ``pa`` to their nearest in ``pb``, by brute force."""
    return np.percentile(torch.cdist(pa, pb).min(1).values.numpy(), 95)


def test_hd95_is_the_larger_directed_percentile():
    # A square with a long spur against the square alone: the spur's voxels are far from b, and
    # pooling both directions before the percentile would dilute them with b's near distances.
    a = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    a[0, 0, 20:40, 20:40] = 1
    b = a.clone()
    a[0, 0, 29:31, 40:62] = 1
    h = hd95_per_label(a, b, [1])[0, 0]
    pa, pb = _surface(a[0, 0], 1), _surface(b[0, 0], 1)
    ab, ba = _directed_p95(pa, pb), _directed_p95(pb, pa)
    assert h == pytest.approx(max(ab, ba), rel=1e-12)
    assert ab > ba  # the spur's direction decides
    pooled = np.percentile(torch.cat([torch.cdist(pa, pb).min(1).values, torch.cdist(pb, pa).min(1).values]), 95)
    assert h > pooled + 1  # the old, pooled definition understated it


@pytest.mark.parametrize("dim", [2, 3])
def test_hd95_one_sided_label_scores_the_diagonal(dim):
    shape = (12, 15, 9)[:dim]
    a = torch.zeros((1, 1) + shape, dtype=torch.long)
    b = a.clone()
    a[(0, 0) + (slice(2, 6),) * dim] = 1  # label 1 only in a (erased in b)
    b[(0, 0) + (slice(3, 7),) * dim] = 2  # label 2 only in b
    spacing = (0.5, 2.0, 1.0)[:dim]
    h, one_sided = hd95_per_label(a, b, [1, 2, 3], spacing=spacing, return_one_sided=True)
    diagonal = np.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing)))
    assert h[0, 0] == pytest.approx(diagonal) and h[0, 1] == pytest.approx(diagonal)
    assert np.isnan(h[0, 2])  # in neither map: nothing to score
    assert one_sided.tolist() == [[True, True, False]]
    assert mean_dice(a, b, [1, 2]).item() == 0  # Dice scores the same labels 0
