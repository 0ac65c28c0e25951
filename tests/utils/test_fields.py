"""Displacement-field shape checks and unit conversion (utils/fields.py), 2D and 3D."""

import pytest
import torch

from utils.errors import ShapeError
from utils.fields import (check_field, check_image_pair, check_same_spatial, check_spatial, to_normalised_units,
                          to_pixel_units)


@pytest.mark.parametrize("dim", [2, 3])
def test_checks_return_the_dimension(dim):
    image = torch.zeros(2, 1, *(5,) * dim)
    assert check_spatial(image, "image") == dim
    assert check_image_pair(image, image, dim) == dim
    assert check_field(torch.zeros(2, dim, *(5,) * dim)) == dim
    check_same_spatial(image, "a", image, "b")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_spatial([1, 2], "image"), "image must be a torch.Tensor"),
        (lambda: check_spatial(torch.zeros(1, 1, 4), "image"), "image has shape 1x1x4"),
        (lambda: check_spatial(torch.zeros(1, 2, 4, 4), "moving", channels=1), "moving has 2 channels"),
        (lambda: check_spatial(torch.zeros(1, 1, 4, 4), "image", dim=3), "3D spatial axes"),
        (lambda: check_same_spatial(torch.zeros(1, 1, 4, 4), "a", torch.zeros(1, 1, 4, 5), "b"), r"a \(1x1x4x4\)"),
        (lambda: check_field(torch.zeros(1, 3, 4, 4)), "3 channels but 2 spatial axes"),
        (lambda: check_image_pair(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, 4)), "fixed image"),
    ],
)
def test_bad_shapes_name_the_tensor(call, message):
    with pytest.raises(ShapeError, match=message):
        call()


@pytest.mark.parametrize("dim", [2, 3])
def test_pixel_units_scale_each_channel_by_its_own_axis(dim):
    shape = (5, 9, 17)[:dim]
    flow = torch.ones(1, dim, *shape)
    px = to_pixel_units(flow)
    for axis, n in enumerate(shape):
        assert torch.all(px[:, axis] == (n - 1) / 2)
    torch.testing.assert_close(to_normalised_units(px), flow)
