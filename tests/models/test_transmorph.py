"""TransMorph: shapes, windows, identity start, size errors (half resolution), one training step, counts."""

import pytest
import torch

from models import TransMorph, build_model, count_parameters, to_pixel_units
from models.sizes import InputSizeError
from models.transmorph import _unwindows, _windows
from utils.errors import ConfigError

# Tiny widths; depths start with 2 so that both plain and shifted windows run.
TINY = dict(embed_dim=8, depths=[2, 1, 1, 1], num_heads=[2, 2, 2, 2])
TINY3 = dict(embed_dim=8, depths=[2, 1, 1], num_heads=[2, 2, 2])
SHAPES = {2: [(64, 96), (32, 32), (96, 64)], 3: [(32, 32, 64), (64, 32, 32)]}


@pytest.mark.parametrize("dim", [2, 3])
def test_shape_and_finite(dim):
    torch.manual_seed(0)
    model = TransMorph(dim, head_init="default", **TINY).eval()
    for shape in SHAPES[dim]:
        with torch.inference_mode():
            flow = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
        assert flow.shape == (1, dim, *shape)
        assert torch.isfinite(flow).all() and flow.abs().max() > 0


@pytest.mark.parametrize("window", [(5, 6), (4, 4, 2)])
def test_window_partition_round_trip(window):
    spatial = tuple(w * k for w, k in zip(window, (3, 2, 2)))
    x = torch.rand(2, *spatial, 5)
    windows = _windows(x, window)
    assert windows.shape == (2 * (x[0, ..., 0].numel() // torch.tensor(window).prod().item()),
                             torch.tensor(window).prod().item(), 5)
    # The first window holds the first block of the image.
    torch.testing.assert_close(windows[0].view(*window, 5), x[(0, *[slice(0, w) for w in window])])
    torch.testing.assert_close(_unwindows(windows, window, spatial, 2), x)


def test_full_preset_starts_at_the_identity_2d():
    torch.manual_seed(0)
    model = build_model("transmorph", {"preset": "base"}, 2).eval()
    x = torch.rand(1, 1, 160, 192)
    with torch.no_grad():
        flow = model(x, x.flip(-1))
    assert to_pixel_units(flow).abs().max() < 1e-3


def test_identity_at_init_3d():
    torch.manual_seed(0)
    model = TransMorph(3, **TINY).eval()
    x = torch.rand(1, 1, 32, 32, 64)
    with torch.no_grad():
        flow = model(x, x.flip(-1))
    assert to_pixel_units(flow).abs().max() < 1e-3


@pytest.mark.parametrize("dim, shape, preset", [(2, (80, 96), "base"), (3, (80, 96, 112), "base"),
                                                (2, (40, 48), "3stage"), (2, (81, 96), "3stage")])
def test_sizes_it_cannot_take(dim, shape, preset):
    model = TransMorph(dim, **(TINY if preset == "base" else TINY3))
    size = "x".join(map(str, shape))
    multiple = 32 if preset == "base" else 16
    with pytest.raises(InputSizeError) as err:
        model.check_input_shape(shape)
    message = str(err.value)
    assert "\n" not in message and f"transmorph cannot run at {size}" in message
    assert f"multiple of {multiple}" in message


def test_half_resolution_runs_with_three_stages():
    """80x96 is refused by the four-stage model but runs with three; the same weights run at 160x192."""
    torch.manual_seed(0)
    model = TransMorph(2, head_init="default", **TINY3).eval()
    with torch.inference_mode():
        for shape in ((80, 96), (160, 192)):
            flow = model(torch.rand(1, 1, *shape), torch.rand(1, 1, *shape))
            assert flow.shape == (1, 2, *shape) and torch.isfinite(flow).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_one_training_step_lowers_the_loss(dim, phantom_pair, one_step):
    torch.manual_seed(0)
    shape = (32, 64) if dim == 2 else (32, 32, 32)
    model = TransMorph(dim, drop_path_rate=0.0, **TINY)
    before, after = one_step(model, *phantom_pair(dim, shape))
    assert after < before


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"preset": "base", "num_heads": [4, 4, 8]}, "one entry per stage"),
        ({"preset": "base", "embed_dim": 90, "num_heads": [4, 4, 8, 8]}, "attention heads"),
        ({"preset": "base", "window_size": [5, 6, 7]}, "window_size"),
        ({"preset": "base", "drop_path_rate": 1.5}, "drop_path_rate"),
    ],
)
def test_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_model("transmorph", cfg, 2)


def test_published_3d_count():
    # TransMorph paper: 46.77 M parameters (3D).
    assert round(count_parameters(build_model("transmorph", {"preset": "base"}, 3)) / 1e6, 2) == 46.77


def test_shifted_windows_do_not_mix_wrapped_regions():
    """A token of a shifted window attends only to its own region, not to what the cyclic shift
    wrapped around from the opposite border; an unshifted block's token sees its whole window."""
    from models.transmorph import _SwinBlock

    torch.manual_seed(0)
    x = torch.rand(1, 8, 8, 4, requires_grad=True)
    reach = {}
    for shifted in (False, True):
        block = _SwinBlock(4, 1, (4, 4), shifted, 2.0, False, 0.0).eval()
        block(x)[0, 0, 0].sum().backward()
        reach[shifted] = (x.grad[0].abs().sum(-1) > 1e-20).nonzero().tolist()
        x.grad = None
    assert reach[False] == [[i, j] for i in range(4) for j in range(4)]
    assert reach[True] == [[i, j] for i in range(2) for j in range(2)]


def test_a_map_as_large_as_its_window_is_shifted_too():
    """As TransMorph's code does (the deepest stage at 160x192 is 5x6, its window): the shifted
    block splits its one window into regions; a map smaller than the window is not shifted."""
    from models.transmorph import _SwinBlock

    torch.manual_seed(0)
    for side, splits in ((4, True), (3, False)):
        x = torch.rand(1, side, side, 4, requires_grad=True)
        block = _SwinBlock(4, 1, (4, 4), True, 2.0, False, 0.0).eval()
        block(x)[0, 0, 0].sum().backward()
        reach = (x.grad[0].abs().sum(-1) > 1e-20).sum().item()
        assert reach == (4 if splits else side * side)  # its 2x2 region, or the whole map


def test_linear_layers_keep_pytorchs_initialisation():
    # TransMorph's code defines Swin's trunc_normal(0.02) init_weights but never calls it.
    torch.manual_seed(0)
    model = build_model("transmorph", {"preset": "3stage"}, 2)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            bound = module.weight.shape[1] ** -0.5  # kaiming_uniform(a=sqrt(5)): U(-bound, bound)
            assert module.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
