"""Scaling and squaring: identity, no folding for a smooth velocity, commutes with resolution."""

import math

import pytest
import torch
import torch.nn.functional as F

from models import ScalingSquaring, identity_grid, to_pixel_units
from models.integrate import steps_for_shape
from utils.errors import ConfigError, ShapeError

SHAPES = {2: (48, 56), 3: (24, 28, 32)}
# Stated tolerance of the resolution test, as a fraction of the largest displacement.
COMMUTE_TOL = {2: 0.01, 3: 0.03}


def smooth_velocity(shape, amplitude, dtype=torch.float32):
    """A smooth, large (not small-deformation) velocity: products of low-frequency sines."""
    grid = identity_grid(shape, dtype=dtype)
    d = len(shape)
    channels = [amplitude * torch.sin(math.pi * grid[(i + 1) % d] + 0.3 * i) * torch.cos(0.5 * math.pi * grid[i])
                for i in range(d)]
    return torch.stack(channels)[None]


def jacobian_determinant(flow):
    """det of d(x + u)/dx in pixel units, central differences, interior points."""
    u = to_pixel_units(flow)[0]
    d = u.shape[0]
    grads = []
    for i in range(d):
        row = []
        for j in range(d):
            g = torch.gradient(u[i], dim=j)[0]
            row.append(g + (1.0 if i == j else 0.0))
        grads.append(torch.stack(row))
    jac = torch.stack(grads).movedim((0, 1), (-2, -1))
    return torch.linalg.det(jac)


@pytest.mark.parametrize("dim", [2, 3])
def test_zero_velocity_gives_the_identity(dim):
    out = ScalingSquaring(7)(torch.zeros(2, dim, *SHAPES[dim]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("dim", [2, 3])
def test_smooth_velocity_gives_no_folding(dim, odd):
    shape = tuple(n + 1 for n in SHAPES[dim]) if odd else SHAPES[dim]
    velocity = smooth_velocity(shape, 0.5)
    # The velocity itself, used as a displacement, folds; its exponential does not.
    assert (jacobian_determinant(velocity) <= 0).any()
    flow = ScalingSquaring(7)(velocity)
    assert torch.isfinite(flow).all()
    assert (jacobian_determinant(flow) > 0).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_integration_commutes_with_resolution(dim):
    """Resample a field to 2x then integrate == integrate then resample, to 1 % (2D) / 3 % (3D) of
    the largest displacement.

    Measured: 0.4 % (2D, 48x56 -> 96x112) and 1.4 % (3D, 24x28x32 -> 48x56x64) for a velocity of
    0.15 normalised units; the difference is the interpolation error of the compositions on the
    coarse grid, and shrinks as the coarse grid grows.
    """
    shape = SHAPES[dim]
    velocity = smooth_velocity(shape, 0.15)
    mode = "bilinear" if dim == 2 else "trilinear"
    up = lambda t: F.interpolate(t, size=tuple(2 * n for n in shape), mode=mode, align_corners=True)  # noqa: E731
    integrate = ScalingSquaring(7)
    coarse = integrate(velocity)
    fine = integrate(up(velocity))
    assert (fine - up(coarse)).abs().max() < COMMUTE_TOL[dim] * coarse.abs().max()


def test_small_velocity_is_nearly_the_displacement():
    velocity = smooth_velocity((32, 40), 1e-4, torch.float64)
    torch.testing.assert_close(ScalingSquaring(7)(velocity), velocity, rtol=0, atol=1e-7)


def test_zero_steps_is_the_identity_map_of_fields():
    velocity = smooth_velocity((16, 20), 0.1)
    assert torch.equal(ScalingSquaring(0)(velocity), velocity)


def test_steps_for_shape():
    assert steps_for_shape((160, 192), max_velocity=0.1) == 5
    assert steps_for_shape((320, 384), max_velocity=0.1) == 6
    assert steps_for_shape((8, 8), max_velocity=0.01) == 1


@pytest.mark.parametrize("steps", [-1, 1.5, True])
def test_bad_steps(steps):
    with pytest.raises(ConfigError, match="steps"):
        ScalingSquaring(steps)


def test_bad_field():
    with pytest.raises(ShapeError, match="velocity field"):
        ScalingSquaring()(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("dim", [2, 3])
def test_composition_with_the_inverse_velocity_map_is_the_identity(dim):
    """exp(v) o exp(-v) = id: the map is invertible, and its inverse is the negated velocity's."""
    from models import warp

    shape = SHAPES[dim]
    grid = identity_grid(shape)
    # A smooth, large velocity that vanishes at the borders (samples outside read zero).
    bump = torch.ones(shape)
    for axis in range(dim):
        bump = bump * torch.cos(0.5 * math.pi * grid[axis]) ** 2
    velocity = 0.3 * bump * smooth_velocity(shape, 1.0)
    forward, backward = ScalingSquaring(7)(velocity), ScalingSquaring(7)(-velocity)
    composed = backward + warp(forward, backward)  # u of exp(v) o exp(-v)
    largest = to_pixel_units(forward).abs().max()
    assert largest > 3  # pixels: a large deformation
    assert to_pixel_units(composed).abs().max() < 0.05 * largest
    assert (jacobian_determinant(forward) > 0).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_border_padding_integrates_a_translation_exactly(dim):
    shape = tuple(n + 1 for n in SHAPES[dim])  # odd sizes
    velocity = torch.zeros(1, dim, *shape)
    velocity[:, 0] = 0.1  # 5 % of the image along axis 0, everywhere
    border = ScalingSquaring(7, padding="border")(velocity)
    torch.testing.assert_close(border, velocity)
    # Zero padding: points carried outside stop moving, so the map breaks near the border.
    zeros = ScalingSquaring(7)(velocity)
    assert (zeros - velocity).abs().max() > 0.01
    assert (jacobian_determinant(border) > 0).all()


def test_padding_is_validated():
    with pytest.raises(ConfigError, match="padding"):
        ScalingSquaring(7, padding="reflect")


def test_each_model_integrates_with_the_padding_of_its_public_code():
    from models import FNOReg, FourierNet, VoxelMorph
    fnoreg = FNOReg(dim=2, hidden_channels=4, projection_channels=4, n_layers=1, n_modes=[4, 4], diffeomorphic=True)
    assert fnoreg.integrate.padding == "border"
    # Fourier-Net-Diff's DiffeomorphicTransform samples with padding_mode="border" (xi-jia/Fourier-Net).
    fourier_net = FourierNet(dim=2, start_channels=4, diffeomorphic=True)
    assert fourier_net.output.integrate.padding == "border"
    # VoxelMorph's VecInt warps with grid_sample's default, zeros.
    vxm = VoxelMorph(dim=2, enc_features=[4, 4, 4, 4], dec_features=[4, 4, 4, 4], integration_steps=7)
    assert vxm.output.integrate.padding == "zeros"
