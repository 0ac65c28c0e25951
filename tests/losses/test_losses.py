"""Losses: similarity terms, the resolution-consistent smoothness penalty, soft Dice, the sum."""

import math

import pytest
import torch

from losses import RegistrationLoss, local_ncc, mse, one_hot, smoothness, soft_dice_loss
from models import identity_grid
from utils.errors import ConfigError, ShapeError


def _smooth_field(shape):
    """A smooth analytic field in normalised units, sampled on ``shape``."""
    grid = identity_grid(shape)
    dim = len(shape)
    comps = [0.05 * torch.sin(math.pi * grid[(c + 1) % dim]) * torch.cos(0.5 * math.pi * grid[c]) for c in range(dim)]
    return torch.stack(comps).unsqueeze(0)


@pytest.mark.parametrize("low, high", [((80, 96), (160, 192)), ((40, 48, 56), (80, 96, 112))])
def test_smoothness_agrees_across_resolutions(low, high):
    a, b = smoothness(_smooth_field(low)), smoothness(_smooth_field(high))
    assert a > 0
    assert abs(a - b) / b < 0.03


def test_smoothness_zero_for_constant_field():
    assert smoothness(torch.full((1, 2, 16, 20), 0.3)) == 0


def test_smoothness_pixel_units():
    # u_0 = x_0 in pixels: squared diffs are 1 for channel 0 along axis 0 and 0 otherwise, so the
    # mean over (channels, pixels) is 1/2 along axis 0 and 0 along axis 1; averaged over axes: 1/4.
    shape = (9, 13)
    flow = torch.zeros(1, 2, *shape)
    flow[0, 0] = identity_grid(shape)[0]
    assert smoothness(flow).item() == pytest.approx(0.25)


@pytest.mark.parametrize("dim", [2, 3])
def test_mse_and_ncc(dim):
    torch.manual_seed(0)
    shape = (1, 1) + (12,) * dim
    x = torch.rand(shape)
    assert mse(x, x) == 0
    assert local_ncc(x, 2 * x + 1).item() == pytest.approx(0.0, abs=1e-3)
    assert local_ncc(x, torch.rand(shape)) > 0.5


def test_similarity_shape_errors():
    with pytest.raises(ShapeError, match="same batch size and spatial shape"):
        mse(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9))


def test_one_hot_and_soft_dice():
    labels = torch.tensor([[[[0, 1], [2, 2]]]])
    oh = one_hot(labels, [1, 2])
    assert oh.shape == (1, 2, 2, 2)
    assert oh[0, 1].sum() == 2
    assert soft_dice_loss(oh, oh).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(oh, oh.flip(1)).item() == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ShapeError, match="integers"):
        one_hot(labels.float(), [1])


def test_registration_loss_terms():
    torch.manual_seed(0)
    fixed, warped = torch.rand(2, 2, 1, 8, 8)
    flow = 0.01 * torch.randn(2, 2, 8, 8)
    oh = one_hot(torch.randint(0, 3, (2, 1, 8, 8)), [1, 2])
    loss = RegistrationLoss(reg_param=0.5, seg_param=0.25)
    total, terms = loss(fixed, warped, flow, oh, oh)
    expected = terms["similarity"] + 0.5 * terms["smoothness"] + 0.25 * terms["dice_loss"]
    torch.testing.assert_close(total, expected)
    total, terms = RegistrationLoss()(fixed, warped, flow)
    assert set(terms) == {"similarity", "smoothness"}


@pytest.mark.parametrize("kwargs, key", [({"similarity": "l1"}, "similarity"), ({"reg_param": -1}, "reg_param"),
                                         ({"seg_param": "a"}, "seg_param")])
def test_registration_loss_config_errors(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        RegistrationLoss(**kwargs)


def _textured(shape, seed=0):
    """Smooth random texture everywhere (no flat window), intensities in [0, 1]."""
    torch.manual_seed(seed)
    x = torch.rand(1, 1, *shape)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 2 else torch.nn.functional.avg_pool3d
    x = pool(x, 3, stride=1, padding=1, count_include_pad=False)
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("shape", [(48, 56), (20, 24, 28)])
def test_ncc_of_image_with_itself_is_zero_where_textured(shape):
    # Local variances of about 1e-3, as in brain images: an eps on window means would dominate.
    x = 0.2 * _textured(shape)
    assert local_ncc(x, x).item() == pytest.approx(0.0, abs=5e-3)


@pytest.mark.parametrize("shape", [(48, 56), (20, 24, 28)])
def test_ncc_does_not_depend_on_intensity_scale(shape):
    fixed, moving = 0.2 * _textured(shape, 0), 0.2 * _textured(shape, 1)
    blend = 0.7 * fixed + 0.3 * moving
    base = local_ncc(fixed, blend).item()
    assert 0.01 < base < 0.99
    # eps is VoxelMorph's 1e-5 on window sums: negligible against local variances of 1e-3.
    assert base == pytest.approx(local_ncc(fixed, blend, eps=0.0).item(), abs=5e-3)
    for scale in (10.0, 100.0):
        assert local_ncc(scale * fixed, scale * blend).item() == pytest.approx(base, abs=5e-3)


def test_ncc_of_real_oasis_slice_with_itself_is_its_background_share():
    """On a real neurite-OASIS slice, NCC(x, x) is 1 only in flat background windows."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("FNOREG_OASIS_SAMPLES", Path(__file__).resolve().parents[3] / "shared" / "oasis_samples"))
    path = root / "2d" / "OASIS_OAS1_0001_MR1" / "slice_norm.nii.gz"
    if not path.exists():
        pytest.skip("neurite-OASIS samples not present")
    import nibabel as nib

    x = torch.from_numpy(nib.load(str(path)).get_fdata()[..., 0]).float()[None, None]
    flat = torch.nn.functional.max_pool2d(x, 9, stride=1, padding=4) == 0  # all-background windows
    loss = local_ncc(x, x).item()
    assert loss == pytest.approx(flat.float().mean().item(), abs=0.02)
    # Before the fix: 0.669, and 0.438 with the intensities scaled by 10.
    assert local_ncc(10 * x, 10 * x).item() == pytest.approx(loss, abs=0.01)


@pytest.mark.parametrize("shape", [(24, 28), (12, 14, 16)])
def test_folding_penalty_zero_without_folds_and_positive_with(shape):
    from losses import folding_penalty

    smooth = _smooth_field(shape)
    assert folding_penalty(smooth).item() == 0.0
    # A field that reverses axis 0 folds everywhere: u_0 = -2 x_0 gives J = -1 inside.
    folded = torch.zeros(1, len(shape), *shape)
    folded[0, 0] = -2 * identity_grid(shape)[0]
    assert folding_penalty(folded).item() == pytest.approx(1.0, abs=1e-4)


def test_folding_penalty_has_gradients_and_enters_the_loss():
    from losses import folding_penalty

    flow = torch.zeros(1, 2, 16, 20)
    flow[0, 0] = -2 * identity_grid((16, 20))[0]
    flow.requires_grad_(True)
    folding_penalty(flow).backward()
    assert flow.grad.abs().sum() > 0
    x = torch.rand(1, 1, 16, 20)
    total0, terms0 = RegistrationLoss(jac_param=0.0)(x, x, flow.detach())
    total1, terms1 = RegistrationLoss(jac_param=0.5)(x, x, flow.detach())
    assert "folding_penalty" not in terms0 and terms1["folding_penalty"].item() == pytest.approx(1.0, abs=1e-4)
    assert (total1 - total0).item() == pytest.approx(0.5, abs=1e-4)
    with pytest.raises(ConfigError, match="jac_param"):
        RegistrationLoss(jac_param=-1)
