"""Mixed-precision helpers: the config value, the autocast context and the float32 regions."""

import pytest
import torch

from utils.errors import ConfigError
from utils.precision import autocast, check_device_supports, check_mixed_precision, in_float32


@pytest.mark.parametrize("value", [False, None, "bfloat16"])
def test_accepted_values(value):
    assert check_mixed_precision(value) is value


@pytest.mark.parametrize("value, hint", [("float16", "loss scaling"), (True, "bfloat16"), ("fp32", "bfloat16")])
def test_rejected_values_name_the_key_and_the_choices(value, hint):
    with pytest.raises(ConfigError, match="train_config.mixed_precision") as exc:
        check_mixed_precision(value)
    assert hint in str(exc.value)


def test_the_cpu_supports_bfloat16():
    check_device_supports("bfloat16", "cpu")


def test_autocast_off_is_a_plain_block_and_on_casts_convolutions():
    x, w = torch.rand(1, 2, 5, 5), torch.rand(3, 2, 1, 1)
    with autocast("cpu", False):
        assert torch.nn.functional.conv2d(x, w).dtype == torch.float32
    with autocast(torch.device("cpu"), "bfloat16"):
        assert torch.nn.functional.conv2d(x, w).dtype == torch.bfloat16


def test_in_float32_leaves_calls_outside_autocast_untouched():
    seen = []

    @in_float32
    def f(x, y=None):
        seen.append((x, y))
        return x @ x

    x, y = torch.rand(3, 3, dtype=torch.float64), torch.rand(2, dtype=torch.bfloat16)
    assert f(x, y=y).dtype == torch.float64
    assert seen[0][0] is x and seen[0][1] is y  # not even copied


def test_in_float32_casts_low_precision_arguments_and_turns_autocast_off():
    @in_float32
    def f(x, y, scale=None):
        assert not torch.is_autocast_enabled("cpu")
        assert x.dtype == y.dtype == scale.dtype == torch.float32
        return (x @ y) * scale, torch.fft.rfft(x).dtype

    x = torch.rand(4, 4, dtype=torch.bfloat16)
    y = torch.rand(4, 4)
    with autocast("cpu", "bfloat16"):
        out, spectrum = f(x, y, scale=torch.ones(4, dtype=torch.bfloat16))
        assert torch.is_autocast_enabled("cpu")  # restored after the call
    assert out.dtype == torch.float32 and spectrum == torch.complex64
    torch.testing.assert_close(out, x.float() @ y)
