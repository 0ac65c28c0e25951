"""models.batchnorm.batch_norm_relu: the same as ``F.relu(bn(x))``, running statistics included."""

import copy

import pytest
import torch
import torch.nn.functional as F

from models.batchnorm import batch_norm_relu
from models.nd import batch_norm


@pytest.mark.parametrize("dim, shape", [(2, (4, 3, 10, 12)), (2, (2, 3, 7, 9)), (3, (2, 3, 5, 6, 7))])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_relu_of_batch_norm_over_steps(dim, shape, affine, momentum):
    torch.manual_seed(0)
    ours = batch_norm(dim, shape[1])
    ours.affine = affine
    if not affine:
        ours.weight, ours.bias = None, None
    ours.momentum = momentum
    if affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.normal_()
    ref = copy.deepcopy(ours)
    for _ in range(3):
        x = (torch.randn(*shape) * 3 + 1).requires_grad_()
        g = torch.randn(*shape)
        y_ours = batch_norm_relu(ours, x)
        y_ref = F.relu(ref(x))
        torch.testing.assert_close(y_ours, y_ref)
        inputs = [x] + ([ours.weight, ours.bias] if affine else [])
        inputs_ref = [x] + ([ref.weight, ref.bias] if affine else [])
        for a, b in zip(torch.autograd.grad(y_ours, inputs, g), torch.autograd.grad(y_ref, inputs_ref, g)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3


def test_evaluation_and_untracked_statistics_fall_back_to_the_module():
    torch.manual_seed(0)
    bn = batch_norm(2, 3)
    bn(torch.randn(4, 3, 5, 5))  # some running statistics
    x = torch.randn(2, 3, 5, 5)
    bn.eval()
    torch.testing.assert_close(batch_norm_relu(bn, x), F.relu(bn(x)))
    untracked = torch.nn.BatchNorm2d(3, track_running_stats=False)
    torch.testing.assert_close(batch_norm_relu(untracked, x), F.relu(untracked(x)))


def test_one_value_per_channel_raises_as_the_module_does():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm_relu(batch_norm(2, 3), torch.randn(1, 3, 1, 1))
