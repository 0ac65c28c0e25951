"""VoxelMorph (four presets): shapes, identity start, size errors, one training step, parameter counts."""

import re

import pytest
import torch

from models import VoxelMorph, build_model, count_parameters, to_pixel_units
from models.sizes import InputSizeError
from utils.errors import ConfigError

# Tiny widths so that 3D runs in milliseconds; the architecture code paths are the presets'.
TINY = {
    "strided": dict(architecture="strided", enc_features=[4, 8, 8, 8], dec_features=[8, 8, 8, 8, 4, 4]),
    "unet": dict(architecture="unet", enc_features=[4, 8, 8, 8], dec_features=[8, 8, 8, 8, 4, 4]),
    "residual": dict(architecture="residual", start_channels=4, levels=4, res_blocks=1, latent_blocks=0),
}
# Even sizes, a non-square one, and one below the usual training size: all multiples of 16.
SHAPES = {2: [(32, 48), (16, 16), (48, 64)], 3: [(16, 16, 32), (32, 16, 16)]}


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", list(TINY))
def test_shape_and_finite(dim, arch):
    torch.manual_seed(0)
    model = VoxelMorph(dim, head_init="default", **TINY[arch]).eval()
    for shape in SHAPES[dim]:
        with torch.inference_mode():
            flow = model(torch.rand(2, 1, *shape), torch.rand(2, 1, *shape))
        assert flow.shape == (2, dim, *shape)
        assert torch.isfinite(flow).all() and flow.abs().max() > 0


@pytest.mark.parametrize("preset", ["vxm1", "vxm2", "large"])
def test_presets_start_at_the_identity_2d(preset):
    torch.manual_seed(0)
    model = build_model("voxelmorph", {"preset": preset}, 2)
    x = torch.rand(2, 1, 16, 32)
    with torch.no_grad():
        flow = model(x, x.flip(-1))
    assert to_pixel_units(flow).abs().max() < 1e-3


@pytest.mark.parametrize("arch", list(TINY))
def test_identity_at_init_3d(arch):
    torch.manual_seed(0)
    model = VoxelMorph(3, **TINY[arch])
    x = torch.rand(1, 1, 16, 16, 32)
    with torch.no_grad():
        flow = model(x, x.flip(-1))
    assert to_pixel_units(flow).abs().max() < 1e-3


@pytest.mark.parametrize("dim, shape", [(2, (40, 48)), (2, (75, 90)), (2, (33, 48)), (3, (16, 16, 20))])
def test_size_error_is_one_line_naming_model_size_and_allowed(dim, shape):
    model = VoxelMorph(dim, **TINY["unet"])
    size = "x".join(map(str, shape))
    with pytest.raises(InputSizeError) as err:
        model.check_input_shape(shape)
    message = str(err.value)
    assert "\n" not in message
    assert f"voxelmorph cannot run at {size}" in message and "multiple of 16" in message
    # The forward pass refuses the same way instead of failing inside a concatenation.
    with pytest.raises(InputSizeError, match=re.escape(size)):
        model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))


def test_size_error_suggests_sizes_that_work():
    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    with pytest.raises(InputSizeError, match=r"80x96 \(--size 80\), 160x192 \(--size 160\)"):
        model.check_input_shape((75, 90))
    assert model.check_input_shape((80, 96)) is None
    assert model.model_name == "voxelmorph"


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("arch", list(TINY))
def test_one_training_step_lowers_the_loss(dim, arch, phantom_pair, one_step):
    torch.manual_seed(0)
    shape = (32, 48) if dim == 2 else (16, 16, 32)
    model = VoxelMorph(dim, **TINY[arch])
    before, after = one_step(model, *phantom_pair(dim, shape))
    assert after < before


def test_pixel_and_normalised_units():
    torch.manual_seed(0)
    pixels = VoxelMorph(2, head_init="default", flow_units="pixels", **TINY["unet"]).eval()
    normalised = VoxelMorph(2, head_init="default", flow_units="normalised", **TINY["unet"]).eval()
    normalised.load_state_dict(pixels.state_dict())
    x, y = torch.rand(2, 1, 1, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(to_pixel_units(pixels(x, y)), normalised(x, y))


def test_diffeomorphic_variant_integrates():
    torch.manual_seed(0)
    model = VoxelMorph(2, head_init="default", integration_steps=7, **TINY["unet"]).eval()
    x, y = torch.rand(2, 1, 1, 32, 48)
    with torch.no_grad():
        flow = model(x, y)
    assert flow.shape == (1, 2, 32, 48) and torch.isfinite(flow).all()


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"preset": "large", "enc_features": [8, 8]}, "other VoxelMorph architecture"),
        ({"preset": "vxm2", "levels": 3}, "other VoxelMorph architecture"),
        ({"preset": "vxm2", "flow_units": "mm"}, "flow_units"),
        ({"preset": "vxm2", "dec_features": [8]}, "dec_features"),
        ({"preset": "vxm2", "head_init": "ones"}, "head_init"),
        ({"enc_features": [8]}, "needs enc_features and dec_features"),
    ],
)
def test_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_model("voxelmorph", cfg, 2)


def test_large_matches_the_published_size():
    # FNOReg paper: VoxelMorph-Large has about 5.82 M (2D) and 15.16 M (3D) parameters.
    assert round(count_parameters(build_model("voxelmorph", {"preset": "large"}, 2)) / 1e6, 2) == 5.82
    assert round(count_parameters(build_model("voxelmorph", {"preset": "large"}, 3)) / 1e6, 2) == 15.16


@pytest.mark.parametrize("preset, published", [("vxm1", 274_387), ("vxm2", 301_411), ("huge", 63_252_939)])
def test_unet_presets_match_the_transmorph_papers_counts(preset, published):
    # The 3D counts the TransMorph paper reports for the VoxelMorph baselines of its code (and of the
    # FNOReg authors' runs), exactly: the same layers, widths and biases.
    assert count_parameters(build_model("voxelmorph", {"preset": preset}, 3)) == published


def test_strided_unet_concatenates_the_input_at_full_resolution():
    model = build_model("voxelmorph", TINY["strided"], 2)
    first_full_res = model.backbone.remaining[0][0]
    assert first_full_res.in_channels == 8 + 2  # last decoder width + the [moving, fixed] input
    assert all(layer[0].stride == (2, 2) for layer in model.backbone.encoder)
