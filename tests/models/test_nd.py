"""The dimension-generic layers of models/nd.py: the 1x1 convolution computed as a matrix product."""

import pytest
import torch
import torch.nn.functional as F

from models.nd import PointwiseConv2d, PointwiseConv3d, conv, pointwise


@pytest.mark.parametrize("dim,shape", [(2, (7, 9)), (2, (16, 20)), (3, (5, 6, 7))])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_matches_library_convolution(dim, shape, bias, batch):
    torch.manual_seed(0)
    layer = conv(dim, 5, 4, 1, bias=bias).double()
    assert isinstance(layer, (PointwiseConv2d, PointwiseConv3d))
    x = torch.randn(batch, 5, *shape, dtype=torch.float64, requires_grad=True)
    library = (F.conv2d if dim == 2 else F.conv3d)(x, layer.weight, layer.bias)
    ours = layer(x)
    assert ours.shape == library.shape
    torch.testing.assert_close(ours, library)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, [x, layer.weight] + ([layer.bias] if bias else []), grad)
    lib_grads = torch.autograd.grad(library, [x, layer.weight] + ([layer.bias] if bias else []), grad)
    for a, b in zip(ours_grads, lib_grads):
        torch.testing.assert_close(a, b)


def test_pointwise_accepts_a_non_contiguous_input():
    x = torch.randn(2, 6, 8, 3).permute(0, 3, 1, 2)  # (2, 3, 6, 8), channels-last strides
    w = torch.randn(4, 3, 1, 1)
    torch.testing.assert_close(pointwise(x, w), F.conv2d(x, w))


def test_other_kernels_stay_library_convolutions():
    assert type(conv(2, 3, 4, 3)) is torch.nn.Conv2d
    assert type(conv(3, 3, 4, 1, stride=2)) is torch.nn.Conv3d


def test_state_dict_keys_are_those_of_a_convolution():
    assert conv(2, 3, 4, 1).state_dict().keys() == torch.nn.Conv2d(3, 4, 1).state_dict().keys()
