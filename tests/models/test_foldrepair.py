"""Local fold repair: a clean field is untouched; a folding one is repaired only around its folds."""

import math

import pytest
import torch

from models import FNOReg, ScalingSquaring, identity_grid
from models.foldrepair import pass_widths, repair_folds
from utils.fields import jacobian_determinant

SHAPES = {2: [(33, 40), (32, 41)], 3: [(15, 18, 21), (16, 17, 20)]}


def smooth_field(shape, amplitude):
    grid = identity_grid(shape)
    d = len(shape)
    return torch.stack([amplitude * torch.sin(math.pi * grid[(i + 1) % d] + 0.3 * i) for i in range(d)])[None]


def with_spike(field, centre, height):
    """Add a sharp one-pixel-wide bump along axis 0 at ``centre``: a fold a few pixels across."""
    out = field.clone()
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in field.shape[2:]],
                                      indexing="ij"))
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    out[0, 0] += height * torch.exp(-r2 / 0.8)
    return out


def far_from(centre, shape, distance):
    grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"))
    return (grid - torch.tensor(centre).view(-1, *[1] * len(shape))).abs().amax(0) > distance


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("index", [0, 1])
def test_a_field_that_does_not_fold_is_returned_unchanged(dim, index):
    shape = SHAPES[dim][index]
    field = smooth_field(shape, 0.05)
    assert (jacobian_determinant(field) > 0).all()
    out, passes = repair_folds(field)
    assert passes == 0
    assert torch.equal(out, field)


@pytest.mark.parametrize("shape", [(48, 57), (31, 34, 37)])
def test_folds_are_removed_and_the_field_far_from_them_is_untouched(shape):
    centre = [n // 2 for n in shape]
    clean = smooth_field(shape, 0.05)
    # A spike of 3 pixels over about one pixel: the map folds there.
    field = with_spike(clean, centre, 3.0 * 2 / (shape[0] - 1))
    assert (jacobian_determinant(field) <= 0).any()
    out, passes = repair_folds(field)
    assert passes >= 1
    assert (jacobian_determinant(out) > 0).all()
    # Outside the dilated mask (radius + the soft edge + the smoothing kernel, per pass) nothing moves.
    reach = sum(r + math.ceil(3 * r / 2) + math.ceil(3 * w) for w, r in map(pass_widths, range(passes)))
    far = far_from(centre, shape, reach)
    assert far.any()
    assert torch.equal(out[:, :, far], field[:, :, far])


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("index", [0, 1])
def test_a_rough_velocity_is_repaired_through_its_integration(dim, index):
    shape = SHAPES[dim][index]
    torch.manual_seed(0)
    # Pixel-scale noise of about 2 pixels: its exponential folds on the discrete grid.
    pixels = torch.tensor([(n - 1) / 2 for n in shape]).view(1, dim, *[1] * dim)
    velocity = 2.0 * torch.randn(1, dim, *shape) / pixels
    integrate = ScalingSquaring(7)
    assert (jacobian_determinant(integrate(velocity)) <= 0).any()
    out, passes = repair_folds(velocity, integrate)
    assert 1 <= passes < 10
    assert (jacobian_determinant(out) > 0).all()


def test_only_the_folding_pair_of_a_batch_changes():
    shape = SHAPES[2][0]
    clean = smooth_field(shape, 0.05)
    batch = torch.cat([clean, with_spike(clean, [16, 20], 0.2)])
    out, _ = repair_folds(batch)
    assert torch.equal(out[0], clean[0])
    assert (jacobian_determinant(out) > 0).all()


def test_widths_double_every_third_pass():
    assert [pass_widths(k) for k in (0, 2, 3, 6)] == [(1.0, 2), (1.0, 2), (2.0, 4), (4.0, 8)]


def test_a_fold_in_a_corner_is_repaired():
    shape = (20, 22, 24)
    field = torch.zeros(1, 3, *shape)
    # The corner voxel pushed 3 voxels inwards along every axis, past its neighbours: it folds.
    for axis, n in enumerate(shape):
        field[0, axis, 0, 0, 0] = 3.0 * 2 / (n - 1)
    assert (jacobian_determinant(field) <= 0).any()
    out, passes = repair_folds(field)
    assert (jacobian_determinant(out) > 0).all()


def test_max_passes_bounds_the_work():
    shape = SHAPES[2][0]
    field = with_spike(smooth_field(shape, 0.05), [16, 20], 2.0)
    out, passes = repair_folds(field, max_passes=1)
    assert passes == 1


@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_fnoreg_repairs_outside_training_only(diffeomorphic):
    torch.manual_seed(0)
    kw = dict(dim=2, hidden_channels=4, projection_channels=8, n_layers=1, n_modes=[4, 4], head_init="default",
              diffeomorphic=diffeomorphic)
    plain, repaired = FNOReg(**kw), FNOReg(**kw, fold_repair=True)
    repaired.load_state_dict(plain.state_dict())
    moving, fixed = torch.rand(2, 2, 1, 20, 24)
    with torch.no_grad():
        plain.train(), repaired.train()
        assert torch.equal(plain(moving, fixed), repaired(moving, fixed))
        plain.eval(), repaired.eval()
        # The same weights, with the head's own field (velocity) repaired as repair_folds does.
        plain.integrate, integrate = None, plain.integrate
        expected, _ = repair_folds(plain(moving, fixed), integrate)
        torch.testing.assert_close(repaired(moving, fixed), expected)


@pytest.mark.parametrize("shape", [(2, 1, 33, 40), (1, 1, 9, 10, 11)])
def test_dilation_is_the_box_max_pool(shape):
    import torch.nn.functional as F
    from models.foldrepair import _dilate
    torch.manual_seed(0)
    mask = (torch.rand(shape) > 0.97).float()
    pool = F.max_pool2d if len(shape) == 4 else F.max_pool3d
    assert torch.equal(_dilate(mask, 3), pool(mask, 7, stride=1, padding=3))
