"""FFC blocks: the alpha split, FFT-axis switch, and resolution independence."""

import copy

import pytest
import torch

from models.ffc import FFC, FFCResidualBlock, FourierUnit, SpectralTransform, folded_conv, resolve_fft_axes
from models.nd import conv
from utils.errors import ConfigError


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_ffc_paths_follow_alpha(dim, alpha):
    ffc = FFC(dim, 8, 8, alpha=alpha)
    assert (ffc.global_to_global is not None) == (alpha > 0)
    assert (ffc.local_to_local is not None) == (alpha < 1)
    assert (ffc.local_to_global is not None) == (0 < alpha < 1)
    x = torch.randn(2, 8, *([12] * dim))
    assert ffc(x).shape == x.shape


def test_alpha_one_is_relu_bn_spectral_transform():
    torch.manual_seed(0)
    ffc = FFC(2, 8, 8, alpha=1.0).eval()
    x = torch.randn(1, 8, 10, 12)
    expected = torch.relu(ffc.bn_global(ffc.global_to_global(x)))
    torch.testing.assert_close(ffc(x), expected)


def test_fft_axes_switch():
    assert resolve_fft_axes("all", 3) == (-3, -2, -1)
    assert resolve_fft_axes("first", 2) == (-2,)
    assert resolve_fft_axes([1], 2) == (-1,)
    with pytest.raises(ConfigError, match="ffc_fft_axes"):
        resolve_fft_axes([2], 2)
    with pytest.raises(ConfigError, match="ffc_fft_axes"):
        resolve_fft_axes("none", 2)


def test_first_axis_unit_mixes_only_along_first_axis():
    torch.manual_seed(0)
    unit = FourierUnit(2, 2, fft_axes="first").eval()
    x = torch.zeros(1, 2, 8, 10)
    x[..., 3] = torch.randn(1, 2, 8)  # energy in one column only
    y = unit(x)
    # Columns are transformed independently: the other columns see only the zero-input response.
    baseline = unit(torch.zeros_like(x))
    others = [c for c in range(10) if c != 3]
    torch.testing.assert_close(y[..., others], baseline[..., others])


@pytest.mark.parametrize("dim", [2, 3])
def test_block_runs_at_any_resolution(dim):
    block = FFCResidualBlock(dim, 4).eval()
    for n in (8, 13):
        x = torch.randn(1, 4, *([n] * dim))
        assert block(x).shape == x.shape


# -- evaluation: batch norms folded into the convolutions before them --------------------------


def _randomise_batch_norms(module, seed=0):
    """Running statistics and affine parameters away from their initial values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                bn.running_mean.normal_(0, 0.5, generator=g)
                bn.running_var.uniform_(0.5, 2.0, generator=g)
                if bn.affine:
                    bn.weight.normal_(1, 0.3, generator=g)
                    bn.bias.normal_(0, 0.3, generator=g)
    return module


def _unit_reference(unit, x):
    """FourierUnit's forward as it was before the folding: each layer on its own, as in training."""
    sizes = [x.shape[a] for a in unit.axes]
    spec = torch.fft.rfft(x, dim=unit.axes[-1], norm=unit.fft_norm)
    if len(unit.axes) > 1:
        spec = torch.fft.fftn(spec, dim=unit.axes[:-1], norm=unit.fft_norm)
    y = torch.cat([spec.real, spec.imag], dim=1)
    y = torch.relu(unit.bn(unit.conv(y)))
    real, imag = y.chunk(2, dim=1)
    return torch.fft.irfftn(torch.complex(real, imag), s=sizes, dim=unit.axes, norm=unit.fft_norm)


def _transform_reference(st, x):
    conv_in, bn_in, _ = st.reduce
    z = torch.relu(bn_in(conv_in(x)))
    return st.expand(_unit_reference(st.fourier, z) + z)


def _ffc_reference(ffc, x):
    x_local, x_global = x[:, : ffc.in_local], x[:, ffc.in_local :]
    outputs = []
    for bn, from_local, from_global in (
        (ffc.bn_local, ffc.local_to_local, ffc.global_to_local),
        (ffc.bn_global, ffc.local_to_global, ffc.global_to_global),
    ):
        if bn is None:
            continue
        terms = []
        if from_local is not None:
            terms.append(from_local(x_local))
        if isinstance(from_global, SpectralTransform):
            terms.append(_transform_reference(from_global, x_global))
        elif from_global is not None:
            terms.append(from_global(x_global))
        outputs.append(torch.relu(bn(sum(terms[1:], terms[0]))))
    return torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]


def _block_reference(block, x):
    return x + _ffc_reference(block.ffc2, _ffc_reference(block.ffc1, x))


@pytest.mark.parametrize("dim, shape", [(2, (12, 16)), (2, (11, 13)), (3, (6, 8, 10)), (3, (5, 7, 9))])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_eval_block_matches_unfolded_batch_norms(dim, shape, batch, alpha, inference_matches):
    torch.manual_seed(0)
    block = _randomise_batch_norms(FFCResidualBlock(dim, 8, alpha=alpha)).eval()
    x = torch.randn(batch, 8, *shape)
    expected = inference_matches(block, x, _block_reference)
    # Eval with autograd on (no in-place shortcuts) computes the same, and differentiates.
    x.requires_grad_(True)
    out = block(x)
    torch.testing.assert_close(out.detach(), expected)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dim, shape", [(2, (12, 16)), (2, (11, 13)), (3, (5, 7, 9))])
def test_training_mode_is_unchanged(dim, shape):
    torch.manual_seed(0)
    block = _randomise_batch_norms(FFCResidualBlock(dim, 8)).train()
    reference = copy.deepcopy(block)
    x = torch.randn(2, 8, *shape)
    out = block(x)
    expected = _block_reference(reference, x)
    # The fused batch norm + ReLU of training (models.batchnorm) computes the statistics in
    # another order: equal to rounding, and the same running statistics after.
    torch.testing.assert_close(out, expected)
    for a, b in zip(block.buffers(), reference.buffers()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("affine", [True, False])
def test_folded_conv_follows_batch_norm_semantics(affine):
    torch.manual_seed(0)
    layer = conv(2, 6, 4, 1, bias=True)
    bn = _randomise_batch_norms(torch.nn.BatchNorm2d(4, affine=affine, eps=1e-3)).eval()
    x = torch.randn(2, 6, 7, 9)
    torch.testing.assert_close(folded_conv(layer, bn, x), bn(layer(x)))
    assert folded_conv(layer, bn.train(), x) is None  # batch statistics: nothing to fold
    untracked = torch.nn.BatchNorm2d(4, track_running_stats=False).eval()
    assert folded_conv(layer, untracked, x) is None  # eval without running stats uses the batch's


def test_folded_conv_is_kept_inside_weight_cache_and_follows_changes(monkeypatch):
    """Inside ``weight_cache`` a fold is computed once and reused; an in-place change to a running
    statistic or a weight (an optimizer step, a training batch) is seen at the next call."""
    import models.ffc as ffc
    from models.spectral import weight_cache

    torch.manual_seed(0)
    block = FFCResidualBlock(2, 8).eval()
    _randomise_batch_norms(block)
    x = torch.randn(1, 8, 12, 16)
    calls = []
    fold = ffc._fold
    monkeypatch.setattr(ffc, "_fold", lambda layer, bn: calls.append(1) or fold(layer, bn))
    with torch.no_grad():
        plain = block(x)
        folds = len(calls)
        with weight_cache(block):
            torch.testing.assert_close(block(x), plain)
            torch.testing.assert_close(block(x), plain)
            assert len(calls) == 2 * folds  # the first call in the block folded, the second reused
            block.ffc1.bn_global.running_var.mul_(4.0)  # in place: a new version
            changed = block(x)
        assert len(calls) == 2 * folds + 1  # only the changed batch norm folded again
        torch.testing.assert_close(changed, block(x))
    assert not any(hasattr(m, "_fold_cache") for m in block.modules())  # dropped on exit


@pytest.mark.parametrize("dim, shape", [(2, (12, 16)), (2, (11, 13)), (3, (6, 8, 10)), (3, (5, 7, 9))])
@pytest.mark.parametrize("fft_axes", ["all", "first", [1]])
@pytest.mark.parametrize("norm", ["ortho", "forward"])
@pytest.mark.parametrize("batch", [1, 2])
def test_unit_inference_matches_reference_on_any_axes(dim, shape, fft_axes, norm, batch):
    torch.manual_seed(0)
    unit = _randomise_batch_norms(FourierUnit(dim, 4, fft_axes=fft_axes, fft_norm=norm)).eval()
    x = torch.randn(batch, 4, *shape)
    with torch.no_grad():
        expected = _unit_reference(unit, x)
        # "forward" scales the inverse by the sample count: rounding scales with the largest value.
        atol = max(1e-5, 1e-6 * expected.abs().max().item())
        torch.testing.assert_close(unit(x), expected, atol=atol, rtol=1.3e-6)


@pytest.mark.parametrize("shape", [(6, 8, 10), (5, 7, 9)])
@pytest.mark.parametrize("fft_axes", [[1, 2], [0, 2], [0, 1]])
def test_unit_inference_on_some_of_three_axes(shape, fft_axes):
    # Without autograd the unit moves the half-spectrum axis first; the other transformed axes must
    # follow it, and the untransformed one must stay untransformed.
    torch.manual_seed(0)
    unit = _randomise_batch_norms(FourierUnit(3, 4, fft_axes=fft_axes)).eval()
    x = torch.randn(2, 4, *shape)
    expected = _unit_reference(unit, x)
    with torch.no_grad():
        torch.testing.assert_close(unit(x), expected, atol=1e-5, rtol=1.3e-6)
    torch.testing.assert_close(unit(x), expected, atol=1e-5, rtol=1.3e-6)  # the autograd path


def test_fold_cache_sees_a_training_batch_through_pytorchs_own_batch_norm(monkeypatch):
    """PyTorch's batch-norm kernel (what CUDA and other dtypes run in training) updates the running
    statistics without bumping their versions; the cached fold must still follow them."""
    import models.batchnorm as batchnorm
    from models.spectral import weight_cache

    monkeypatch.setattr(batchnorm, "_fusable", lambda bn, x: False)
    torch.manual_seed(0)
    block = FFCResidualBlock(2, 8).eval()
    x = torch.randn(2, 8, 12, 16)
    with weight_cache(block):
        with torch.no_grad():
            block(x)  # folds cached from the initial statistics
            block.train()(3 * x + 1)  # a training batch moves the running statistics
            cached = block.eval()(x)
    with torch.no_grad():
        torch.testing.assert_close(cached, block(x))
