"""FNOReg: shapes at several resolutions, resolution transfer, parameter counts, identity start."""

import re
from pathlib import Path

import pytest
import torch

from models import FNOReg, build_model, count_parameters, warp
from models.fnoreg import FourierLayer
from tests.models.test_ffc import _block_reference, _randomise_batch_norms
from utils.errors import ConfigError, ShapeError

README = Path(__file__).resolve().parents[2] / "README.md"
PRESETS_2D = ["small", "medium", "large"]
SHAPES = {2: [(80, 96), (160, 192)], 3: [(40, 48, 56), (80, 96, 112)]}


@pytest.fixture(scope="module")
def presets():
    """Every preset built once (the 3D one has about 98 M parameters)."""
    torch.manual_seed(0)
    models = {name: build_model("fnoreg", {"preset": name}, 2) for name in PRESETS_2D}
    models["3d"] = build_model("fnoreg", {"preset": "3d"}, 3)
    for m in models.values():
        m.eval()
    return models


def _randomise_head(model):
    # A zero-initialised head outputs exactly zero; give it weights so shape/finiteness mean something.
    torch.nn.init.normal_(model.projection[-1].weight, std=0.1)


@pytest.mark.parametrize("preset", PRESETS_2D + ["3d"])
def test_output_shape_and_finite_at_every_resolution(presets, preset):
    model = presets[preset]
    _randomise_head(model)
    dim = model.dim
    for shape in SHAPES[dim]:
        x = torch.rand(1, 1, *shape)
        with torch.inference_mode():
            flow = model(x, torch.rand(1, 1, *shape))
        assert flow.shape == (1, dim, *shape)
        assert torch.isfinite(flow).all()
        assert flow.abs().max() > 0


@pytest.mark.parametrize("dim", [2, 3])
def test_same_weights_run_at_another_resolution(dim):
    torch.manual_seed(0)
    n_modes = [8, 10] if dim == 2 else [8, 10, 12]
    model = FNOReg(dim, 8, 16, 2, n_modes, head_init="default").eval()
    low, high = SHAPES[dim]
    fixed = torch.rand(1, 1, *high)
    moving = torch.roll(fixed, 3, dims=2)
    with torch.inference_mode():
        flow_high = model(moving, fixed)
        # Built and run at one resolution, the same module runs at half of it too.
        down = [torch.nn.functional.interpolate(t, size=low, mode="bilinear" if dim == 2 else "trilinear")
                for t in (moving, fixed)]
        flow_low = model(*down)
    assert flow_high.shape[2:] == high and flow_low.shape[2:] == low
    assert not any(isinstance(b, torch.Tensor) and b.shape[-dim:] in (low, high) for b in model.buffers())


def test_untrained_model_is_identity():
    torch.manual_seed(0)
    model = build_model("fnoreg", {"preset": "small"}, 2).eval()
    fixed, moving = torch.rand(2, 1, 1, 80, 96)
    with torch.inference_mode():
        flow = model(moving, fixed)
    assert torch.count_nonzero(flow) == 0
    torch.testing.assert_close(warp(moving, flow), moving, atol=2e-5, rtol=0)


def test_zero_head_still_learns():
    torch.manual_seed(0)
    model = FNOReg(2, 8, 16, 1, [8, 10])
    flow = model(torch.rand(2, 1, 32, 40), torch.rand(2, 1, 32, 40))
    flow.pow(2).sum().backward()  # zero output -> zero grad of the head weight, so probe a linear loss
    model.zero_grad()
    flow = model(torch.rand(2, 1, 32, 40), torch.rand(2, 1, 32, 40))
    flow.sum().backward()
    assert model.projection[-1].weight.grad.abs().sum() > 0


def _readme_counts():
    text = README.read_text() if README.exists() else ""
    table = {}
    for name, count in re.findall(r"\|\s*`?fnoreg/(\w+)`?\s*\|[^|\n]*\|\s*([\d,]+)\s*\|", text):
        table[name] = int(count.replace(",", ""))
    return table


@pytest.mark.parametrize("preset", PRESETS_2D + ["3d"])
def test_parameter_count_matches_readme(presets, preset):
    count = count_parameters(presets[preset])
    print(f"fnoreg/{preset}: {count:,} parameters")
    documented = _readme_counts()
    assert preset in documented, f"README.md must document the parameter count of fnoreg/{preset}"
    assert count == documented[preset]


def test_complex_weights_count_twice():
    model = FNOReg(2, 4, 4, 1, [4, 4], factorization="dense")
    spectral = model.layers[0].spectral
    n_complex = sum(p.numel() for p in spectral.parameters() if p.is_complex())
    n_real = sum(p.numel() for p in model.parameters() if not p.is_complex())
    assert n_complex == 4 * 4 * 4 * 3
    assert count_parameters(model) == 2 * n_complex + n_real


def test_dense_and_tucker_factorisations():
    tucker = FNOReg(2, 16, 32, 1, [40, 48], factorization="tucker", rank=0.42)
    dense = FNOReg(2, 16, 32, 1, [40, 48], factorization="dense")
    n_t = count_parameters(tucker.layers[0].spectral)
    n_d = count_parameters(dense.layers[0].spectral)
    assert n_d == 2 * 16 * 16 * 40 * 25
    assert 0.35 < n_t / n_d < 0.5


@pytest.mark.parametrize("factorization", ["tucker", "dense"])
def test_spectral_weights_start_at_the_released_codes_scale(factorization):
    # neuraloperator 0.2 (the released code's) drew them with std 1 / C^2, neuraloperator 2.0 with
    # sqrt(2 / (2 C)): 64 times more for C = 16.
    def weight_std(init):
        torch.manual_seed(0)
        kwargs = {} if init is None else {"spectral_init": init}
        model = FNOReg(2, 16, 32, 1, [40, 48], factorization=factorization, **kwargs)
        return model.layers[0].spectral.weight.to_tensor().std().item()
    assert weight_std(None) == pytest.approx(1 / 16**2, rel=0.1)  # the default
    assert weight_std("neuraloperator") == pytest.approx((2 / 32) ** 0.5, rel=0.1)
    with pytest.raises(ConfigError, match="spectral_init must be one of"):
        FNOReg(2, 16, 32, 1, [40, 48], spectral_init="xavier")


@pytest.mark.parametrize(
    "moving, fixed, message",
    [
        (torch.rand(1, 1, 32, 40), torch.rand(1, 1, 32, 48), "same batch size and spatial shape"),
        (torch.rand(1, 2, 32, 40), torch.rand(1, 1, 32, 40), "2 channels"),
        (torch.rand(1, 1, 32, 40, 8), torch.rand(1, 1, 32, 40, 8), "2D"),
        (torch.rand(32, 40), torch.rand(32, 40), "expected (batch, channels, *spatial)"),
    ],
)
def test_bad_inputs_name_the_problem(moving, fixed, message):
    model = FNOReg(2, 4, 4, 1, [4, 4])
    with pytest.raises(ShapeError, match=re.escape(message)):
        model(moving, fixed)


def _smooth_pair(shape):
    """A smooth blob and a shifted copy, sampled on ``linspace(-1, 1, n)`` per axis."""
    axes = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in shape], indexing="ij")

    def blob(shift):
        r2 = sum(((a - s) / 0.45) ** 2 for a, s in zip(axes, shift))
        return torch.exp(-r2)[None, None]

    return blob([0.08] + [0.0] * (len(shape) - 1)), blob([0.0] * len(shape))


def _on_grid(field, shape):
    mode = "bilinear" if field.ndim == 4 else "trilinear"
    return torch.nn.functional.interpolate(field, size=shape, mode=mode, align_corners=True)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_field_is_the_same_at_neighbouring_even_and_odd_sizes(dim, axis):
    """n, n+1 and n+2 samples of one smooth pair give one field, up to interpolation error.

    neuraloperator 2.0.0's forward shifts every kept mode by one bin on an odd axis (all but
    the last), which made the 161-row field differ from the 160-row one by more than its own
    variation.
    """
    if axis >= dim:
        pytest.skip("no such axis")
    torch.manual_seed(0)
    n_modes = [12, 14] if dim == 2 else [8, 10, 10]
    model = FNOReg(dim, 8, 16, 2, n_modes, head_init="default").eval()
    base = [48, 56] if dim == 2 else [24, 28, 32]
    fields = []
    for extra in (0, 1, 2):
        shape = list(base)
        shape[axis] += extra
        with torch.inference_mode():
            field = model(*_smooth_pair(shape))
        fields.append(_on_grid(field, base))
    scale = fields[0].std()
    assert scale > 1e-3  # the head is non-zero: the comparison means something
    for other in fields[1:]:
        rel = (other - fields[0]).norm() / (fields[0] - fields[0].mean()).norm()
        assert rel < 0.05, f"field at another size differs by {100 * rel:.1f} % of its variation"


@pytest.mark.parametrize("odd", [False, True])
@pytest.mark.parametrize("dim", [2, 3])
def test_diffeomorphic_fnoreg_integrates_its_velocity(dim, odd):
    from models.integrate import ScalingSquaring

    torch.manual_seed(0)
    n_modes = [8, 10] if dim == 2 else [6, 8, 8]
    shape = (24, 28) if dim == 2 else (12, 14, 16)
    if odd:  # odd, and below the kept modes on the first axis
        shape = (7, 27) if dim == 2 else (5, 13, 15)
    diffeo = FNOReg(dim, 8, 16, 1, n_modes, diffeomorphic=True, integration_steps=5).eval()
    x, y = torch.rand(2, 1, 1, *shape)
    with torch.no_grad():
        assert torch.count_nonzero(diffeo(x, y)) == 0  # zero head: zero velocity, identity map
        torch.nn.init.normal_(diffeo.projection[-1].weight, std=0.05)
        plain = FNOReg(dim, 8, 16, 1, n_modes).eval()
        plain.load_state_dict(diffeo.state_dict())
        torch.testing.assert_close(diffeo(x, y), ScalingSquaring(5, padding="border")(plain(x, y)))


@pytest.mark.parametrize("momentum, diffeomorphic", [(0.1, False), (None, False), (0.1, True)])
def test_checkpointing_gives_the_same_loss_and_gradients(momentum, diffeomorphic):
    """Checkpointed FFC blocks and Fourier layers: same gradients, and the
    backward pass leaves the batch norms' running statistics as one forward pass left them (the
    exponential and the cumulative rule), over two steps at two sizes."""
    torch.manual_seed(0)
    plain = FNOReg(2, 8, 16, 2, [8, 10], head_init="default", diffeomorphic=diffeomorphic)
    ckpt = FNOReg(2, 8, 16, 2, [8, 10], head_init="default", diffeomorphic=diffeomorphic, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    for m in [*plain.modules(), *ckpt.modules()]:
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
    for shape in [(24, 28), (7, 9)]:  # even; then odd, below the kept modes, and another size
        x, y = torch.rand(2, 2, 1, *shape)
        grads = []
        for model in (plain, ckpt):
            model.train()
            model.zero_grad()
            model(x, y).square().mean().backward()
            grads.append([p.grad.clone() for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b)
        for a, b in zip(plain.buffers(), ckpt.buffers()):  # batch-norm statistics updated once
            torch.testing.assert_close(a, b)
    assert all(m.momentum == momentum for m in ckpt.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _layer_reference(layer, x):
    """FourierLayer's formula, each term on its own: ``GELU(K(x) + W(x)) [+ x]``."""
    y = torch.nn.functional.gelu(layer.spectral(x) + layer.pointwise(x))
    return y + x if layer.residual else y


@pytest.mark.parametrize("dim, shape", [(2, (20, 24)), (2, (21, 23)), (3, (8, 10, 12)), (3, (7, 9, 11))])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("residual", [True, False])
def test_fourier_layer_inference_matches_its_formula(dim, shape, batch, residual, inference_matches):
    torch.manual_seed(0)
    layer = FourierLayer(dim, 6, [8] * dim, residual=residual).eval()
    torch.nn.init.normal_(layer.pointwise.bias)  # non-zero, so its route through frequency 0 counts
    inference_matches(layer, torch.randn(batch, 6, *shape), _layer_reference)


@pytest.mark.parametrize("dim, shape", [(2, (20, 24)), (2, (21, 23)), (2, (5, 7)), (3, (8, 10, 12)), (3, (7, 9, 11))])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("residual", [True, False])
def test_fourier_layer_training_matches_its_formula_and_gradients(dim, shape, batch, residual):
    """With autograd on, the layer is one function (FourierLayerFunction): same value, same gradients."""
    torch.manual_seed(0)
    layer = FourierLayer(dim, 6, [8] * dim, residual=residual).train()
    torch.nn.init.normal_(layer.pointwise.bias)
    x = torch.randn(batch, 6, *shape, requires_grad=True)
    out = layer(x)
    assert out.grad_fn.name() == "FourierLayerFunctionBackward"
    expected = _layer_reference(layer, x)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    inputs = [x, *layer.parameters()]
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(expected, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dim, shape", [(2, (40, 48)), (2, (41, 47)), (3, (12, 14, 16)), (3, (13, 15, 17))])
@pytest.mark.parametrize("batch", [1, 2])
def test_inference_matches_the_model_written_out(dim, shape, batch):
    """The whole network in inference (folded batch norms, fused layers) against its formula."""
    torch.manual_seed(0)
    n_modes = [8, 10] if dim == 2 else [6, 8, 8]
    model = _randomise_batch_norms(FNOReg(dim, 8, 16, 2, n_modes, head_init="default")).eval()
    moving, fixed = torch.rand(2, batch, 1, *shape)
    with torch.no_grad():
        x = model.lifting(torch.cat([moving, fixed], dim=1))
        x = _block_reference(model.encoder, x)
        for layer in model.layers:
            x = _layer_reference(layer, x)
        expected = model.projection(_block_reference(model.decoder, x))
    with torch.inference_mode():
        fast = model(moving, fixed)
    torch.testing.assert_close(fast, expected)
