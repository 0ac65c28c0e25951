"""Fourier-Net and Fourier-Net-Diff: band-limited output at any allowed size, identity start, size
errors, one training step, parameter counts against the published ones."""

import pytest
import torch

from models import FourierNet, build_model, count_parameters, to_pixel_units
from models.fouriernet import band_limited_upsample
from models.sizes import InputSizeError

SHAPES = {2: [(32, 48), (16, 16), (64, 80)], 3: [(16, 16, 32), (32, 16, 16)]}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_output_follows_the_input_size(dim, diffeomorphic):
    torch.manual_seed(0)
    model = FourierNet(dim, 2, diffeomorphic=diffeomorphic, head_init="default").eval()
    for shape in SHAPES[dim]:
        with torch.inference_mode():
            flow = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
        assert flow.shape == (1, dim, *shape)
        assert torch.isfinite(flow).all() and flow.abs().max() > 0


@pytest.mark.parametrize("dim", [2, 3])
def test_field_is_band_limited_to_a_quarter_of_each_side(dim):
    torch.manual_seed(0)
    model = FourierNet(dim, 2, head_init="default").eval()
    shape = SHAPES[dim][0]
    with torch.inference_mode():
        patch = model.band(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
        flow = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    assert patch.shape[2:] == tuple(n // 4 for n in shape)
    spectrum = torch.fft.fftshift(torch.fft.fftn(flow, dim=tuple(range(2, dim + 2))), dim=tuple(range(2, dim + 2)))
    # Kept: |k| <= m/2 for m = n/4 coefficients per axis (the real part mirrors the Nyquist row).
    keep = torch.zeros(shape, dtype=torch.bool)
    keep[tuple(slice(n // 2 - n // 8, n // 2 + n // 8 + 1) for n in shape)] = True
    outside = spectrum[..., ~keep].abs().max()
    assert outside < 1e-4 * spectrum.abs().max()


def test_band_limited_upsample_interpolates_the_patch():
    torch.manual_seed(0)
    patch = torch.rand(2, 2, 10, 12, dtype=torch.float64)
    field = band_limited_upsample(patch, (40, 48))
    torch.testing.assert_close(field[..., ::4, ::4], patch)
    # A constant patch decodes to the same constant, whatever the output size.
    ones = band_limited_upsample(torch.ones(1, 3, 5, 6, 7), (20, 24, 28))
    torch.testing.assert_close(ones, torch.ones(1, 3, 20, 24, 28))


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_identity_at_init(dim, diffeomorphic):
    torch.manual_seed(0)
    model = FourierNet(dim, 2, diffeomorphic=diffeomorphic)
    shape = SHAPES[dim][0]
    x = torch.rand(1, 1, *shape)
    with torch.no_grad():
        flow = model(x, x.flip(-1))
    assert to_pixel_units(flow).abs().max() < 1e-3


def test_presets_start_at_the_identity():
    model = build_model("fouriernet", {"preset": "c16"}, 2)
    x = torch.rand(1, 1, 32, 48)
    with torch.no_grad():
        assert torch.count_nonzero(model(x, x.flip(-1))) == 0


@pytest.mark.parametrize("dim, shape", [(2, (40, 48)), (2, (81, 96)), (3, (16, 16, 20))])
def test_size_error(dim, shape):
    model = FourierNet(dim, 2)
    size = "x".join(map(str, shape))
    with pytest.raises(InputSizeError) as err:
        model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    message = str(err.value)
    assert "\n" not in message and f"fouriernet cannot run at {size}" in message and "multiple of 16" in message


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("diffeomorphic", [False, True])
def test_one_training_step_lowers_the_loss(dim, diffeomorphic, phantom_pair, one_step):
    torch.manual_seed(0)
    shape = (32, 48) if dim == 2 else (16, 16, 32)
    model = FourierNet(dim, 4, diffeomorphic=diffeomorphic)
    before, after = one_step(model, *phantom_pair(dim, shape))
    assert after < before


@pytest.mark.parametrize("preset, published", [("c16", 1.43), ("c32", 5.71)])
def test_published_2d_counts(preset, published):
    # Fourier-Net (AAAI 2023): parameters used in the forward pass, 2D.
    assert round(count_parameters(build_model("fouriernet", {"preset": preset}, 2)) / 1e6, 2) == published


@pytest.mark.parametrize("preset", ["c16", "c32"])
@pytest.mark.parametrize("dim", [2, 3])
def test_diffeomorphic_variant_adds_no_parameters(preset, dim):
    model = build_model("fouriernet", {"preset": preset}, dim)
    diff = build_model("fouriernet", {"preset": preset, "diffeomorphic": True}, dim)
    assert count_parameters(diff) == count_parameters(model)  # integration adds no parameters



@pytest.mark.parametrize("dim, gain", [(2, 4.0), (3, 1 / 64)])
def test_decoding_gain_is_the_public_codes(dim, gain):
    # 2D: the network output times 64, unnormalised FFT and 1/N inverse (a 1/16 smaller patch);
    # 3D (the FNOReg authors' code): the same without the 64. A head output of 1 everywhere
    # decodes to a constant field of the gain.
    model = FourierNet(dim, 2).eval()
    model.head.register_forward_hook(lambda module, args, out: torch.ones_like(out))
    shape = SHAPES[dim][0]
    with torch.inference_mode():
        flow = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
    torch.testing.assert_close(flow, torch.full_like(flow, gain))
