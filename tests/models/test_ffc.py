"""FFC blocks: the alpha split, FFT-axis switch, and resolution independence."""

import pytest
import torch

from models.ffc import FFC, FFCResidualBlock, FourierUnit, resolve_fft_axes
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
