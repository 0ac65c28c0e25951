"""Spatial transformer: identity, known shifts along every axis, affine fields, labels."""

import pytest
import torch

from models import identity_grid, to_normalised_units, to_pixel_units, warp
from models.warp import sampling_grid
from utils.errors import ShapeError

SHAPES = {2: (12, 16), 3: (10, 12, 14)}


def _point_image(shape, where, dtype=torch.float32):
    img = torch.zeros(1, 1, *shape, dtype=dtype)
    img[(0, 0, *where)] = 1
    return img


@pytest.mark.parametrize("dim", [2, 3])
def test_zero_field_is_identity(dim):
    shape = SHAPES[dim]
    img64 = torch.rand(2, 3, *shape, dtype=torch.float64)
    zero64 = torch.zeros(2, dim, *shape, dtype=torch.float64)
    torch.testing.assert_close(warp(img64, zero64), img64, atol=1e-12, rtol=0)
    img = img64.float()
    torch.testing.assert_close(warp(img, zero64.float()), img, atol=2e-5, rtol=0)
    labels = torch.randint(0, 20, (2, 1, *shape))
    assert torch.equal(warp(labels, zero64.float()), labels)


@pytest.mark.parametrize("dim, axis", [(2, 0), (2, 1), (3, 0), (3, 1), (3, 2)])
@pytest.mark.parametrize("pixels", [2, -3])
def test_constant_field_moves_pattern_along_its_axis(dim, axis, pixels):
    shape = SHAPES[dim]
    src = [5] * dim
    img = _point_image(shape, src)
    flow_px = torch.zeros(1, dim, *shape)
    flow_px[:, axis] = pixels
    out = warp(img, to_normalised_units(flow_px))
    # Pull warp: out(x) = img(x + u), so the bright pixel appears at src - u along `axis` only.
    expected = list(src)
    expected[axis] -= pixels
    peak = torch.nonzero(out[0, 0] > 0.999).tolist()
    assert peak == [expected]
    assert out.sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dim", [2, 3])
def test_affine_field_scales_coordinates(dim):
    # u(x) = 0.5 * x in normalised units maps x to 1.5 x: a point at normalised p appears at p / 1.5.
    shape = tuple(2 * n + 1 for n in SHAPES[dim])  # odd sizes: the centre is a pixel
    centre = [n // 2 for n in shape]
    offset = [3, -2, 4][:dim]
    src = [c + 3 * o for c, o in zip(centre, offset)]
    img = _point_image(shape, src)
    flow = 0.5 * identity_grid(shape).unsqueeze(0)
    out = warp(img, flow)
    expected = [c + 2 * o for c, o in zip(centre, offset)]
    assert torch.nonzero(out[0, 0] > 0.999).tolist() == [expected]


def test_pixel_unit_conversion_uses_each_axis_length():
    flow = torch.ones(1, 3, 5, 9, 17)
    px = to_pixel_units(flow)
    assert [px[0, c].unique().item() for c in range(3)] == [2.0, 4.0, 8.0]
    torch.testing.assert_close(to_normalised_units(px), flow)


@pytest.mark.parametrize("dim", [2, 3])
def test_labels_stay_integers(dim):
    shape = SHAPES[dim]
    labels = torch.randint(0, 36, (2, 1, *shape), dtype=torch.int16)
    flow = 0.1 * torch.randn(2, dim, *shape)
    out = warp(labels, flow, mode="bilinear")
    assert out.dtype == torch.int16
    assert set(out.unique().tolist()) <= set(labels.unique().tolist()) | {0}


def test_batch_of_one_broadcasts():
    img = torch.rand(1, 1, 8, 8)
    flow = torch.zeros(3, 2, 8, 8)
    assert warp(img, flow).shape == (3, 1, 8, 8)


@pytest.mark.parametrize(
    "image, flow, message",
    [
        (torch.rand(1, 1, 8, 8), torch.zeros(1, 3, 8, 8), "3 channels but 2 spatial axes"),
        (torch.rand(1, 1, 8, 9), torch.zeros(1, 2, 8, 8), "does not match"),
        (torch.rand(1, 1, 8, 8, 8), torch.zeros(1, 2, 8, 8), "2D spatial axes"),
        (torch.rand(2, 1, 8, 8), torch.zeros(3, 2, 8, 8), "batch"),
    ],
)
def test_bad_shapes_are_named(image, flow, message):
    with pytest.raises(ShapeError, match=message):
        warp(image, flow)


@pytest.mark.parametrize("dim", [2, 3])
def test_border_padding_reads_the_border_value(dim):
    shape = (6, 7, 8)[:dim]
    image = torch.full((1, 1, *shape), 2.0)
    flow = torch.zeros(1, dim, *shape)
    flow[:, 0] = 1.0  # half the image: the lower half samples outside
    assert warp(image, flow).min() == 0
    torch.testing.assert_close(warp(image, flow, padding="border"), image)
    with pytest.raises(ValueError, match="padding"):
        warp(image, flow, padding="reflection")


def _reference_warp(image, flow):
    """grid_sample with the identity built afresh, in one piece (the formula, written out)."""
    grid = (identity_grid(flow.shape[2:], flow.device, flow.dtype) + flow).movedim(1, -1).flip(-1)
    return torch.nn.functional.grid_sample(image, grid, align_corners=True)


@pytest.mark.parametrize("shape", [(160, 192), (81, 95), (40, 48, 56), (15, 17)])
def test_split_batch_one_warp_equals_one_piece(shape):
    """A batch-1 CPU warp is cut into slabs sampled as a batch (grid_sample parallelises over the
    batch only); values must be those of the one-piece formula bit for bit, gradients up to the
    order in which the image gradient's contributions from the slabs are summed."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        image = torch.rand(1, 2, *shape, requires_grad=True)
        flow = (0.05 * torch.randn(1, len(shape), *shape)).requires_grad_()
        ours = warp(image, flow)
        ref = _reference_warp(image, flow)
        assert torch.equal(ours, ref)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(ours, (image, flow), g), torch.autograd.grad(ref, (image, flow), g)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    finally:
        torch.set_num_threads(threads)


def test_split_warp_of_label_maps_equals_one_piece():
    """Label maps (nearest, integer) through the split path: the same labels as one grid_sample."""
    torch.manual_seed(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        labels = torch.randint(0, 30, (1, 1, 160, 192))
        flow = 0.05 * torch.randn(1, 2, 160, 192)
        grid = (identity_grid((160, 192)) + flow).movedim(1, -1).flip(-1)
        ref = torch.nn.functional.grid_sample(labels.float(), grid, mode="nearest", align_corners=True)
        out = warp(labels, flow)
        assert out.dtype == labels.dtype and torch.equal(out, ref.round().long())
    finally:
        torch.set_num_threads(threads)


def test_kept_grid_serves_inference_and_training():
    """The identity grid kept from an inference call is an ordinary tensor: training can use it."""
    image, flow = torch.rand(1, 1, 24, 20), torch.zeros(1, 2, 24, 20)
    with torch.inference_mode():
        first = sampling_grid((24, 20))
        warp(image, flow)
    flow.requires_grad_()
    warp(image, flow).sum().backward()  # would raise if the grid were an inference tensor
    assert sampling_grid((24, 20)) is first and not first.is_inference() and not first.requires_grad
    torch.testing.assert_close(first[0].flip(-1).movedim(-1, 0), identity_grid((24, 20)))
