"""Per-pair refinement: lowers its pair's objective, keeps the field unfolded, 0 steps is a no-op."""

import pytest
import torch

from engine.refine import DEFAULT_REFINE_JAC_PARAM, refine_field, refine_loss
from engine.metrics import folding_percent
from losses import RegistrationLoss
from models import warp


def _blob_pair(shape, shift=2):
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")
    fixed = torch.exp(-sum((a / 0.4) ** 2 for a in axes))[None, None]
    moving = torch.roll(fixed, shift, dims=2)
    return moving, fixed


@pytest.mark.parametrize("shape", [(32, 40), (16, 18, 20)])
def test_refinement_lowers_the_pair_objective_without_folding(shape):
    moving, fixed = _blob_pair(shape)
    flow = torch.zeros(1, len(shape), *shape)
    loss_fn = refine_loss(RegistrationLoss())
    before = loss_fn(fixed, warp(moving, flow), flow)[0].item()
    with torch.inference_mode():  # as in evaluation
        refined = refine_field(moving, fixed, flow, steps=30, loss_fn=loss_fn)
    after = loss_fn(fixed, warp(moving, refined), refined)[0].item()
    assert after < 0.7 * before
    assert folding_percent(refined).max() < 0.5


def test_zero_steps_returns_the_network_field():
    moving, fixed = _blob_pair((16, 20))
    flow = torch.randn(1, 2, 16, 20) * 0.01
    assert refine_field(moving, fixed, flow, steps=0) is flow


def test_refine_loss_drops_labels_and_adds_a_folding_term():
    loss = refine_loss(RegistrationLoss(seg_param=0.01, reg_param=0.02))
    assert loss.seg_param == 0 and loss.reg_param == 0.02 and loss.jac_param == DEFAULT_REFINE_JAC_PARAM
    assert refine_loss(RegistrationLoss(jac_param=0.3)).jac_param == 0.3


def test_repair_leaves_the_refined_field_unfolded():
    moving, fixed = _blob_pair((24, 28))
    torch.manual_seed(0)
    # A rough start that folds badly; one step cannot undo it, the repair does.
    flow = 0.3 * torch.randn(1, 2, 24, 28)
    with torch.inference_mode():
        plain = refine_field(moving, fixed, flow, steps=1)
        repaired = refine_field(moving, fixed, flow, steps=1, repair=True)
    assert folding_percent(plain).max() > 0
    assert folding_percent(repaired).max() == 0
