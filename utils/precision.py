"""Mixed precision: the network in bfloat16 where autocast chooses, the numerics that need it in float32.

``train_config.mixed_precision: "bfloat16"`` runs each training step's forward pass under
``torch.autocast`` (convolutions and matrix products in bfloat16, on a GPU and on a CPU with
AVX-512 BF16 alike); the loss, the warp, validation and evaluation stay in float32, and the
weights, gradients and optimizer state are float32 throughout. Parts of a model that must not
run in bfloat16 are wrapped in :func:`in_float32`: every FFT (cuFFT and PyTorch's CPU FFT have
no bfloat16 transforms, and 8 bits of mantissa would swamp the spectra anyway), the spectral
layers with their complex weights, and the integration and warp of the field (a displacement
rounded to 8 bits moves a pixel by up to 0.4 % of its value).

float16 is not offered: its range needs loss scaling (a ``GradScaler`` and its state in every
checkpoint), while bfloat16 has float32's range and runs on the GPUs of the last five years
(Ampere and later) and on recent CPUs.
"""

import contextlib
import functools

import torch

from utils.errors import ConfigError, UserError

MIXED_PRECISIONS = {"bfloat16": torch.bfloat16}
_LOW = (torch.bfloat16, torch.float16)


def check_mixed_precision(value, key="train_config.mixed_precision"):
    """``value`` if it is false / null (float32 throughout) or a name in :data:`MIXED_PRECISIONS`."""
    if value is None or value is False or value in MIXED_PRECISIONS:
        return value
    hint = " (float16 would need loss scaling; bfloat16 has float32's range)" if value == "float16" else ""
    raise ConfigError(f"{key} must be false or one of {sorted(MIXED_PRECISIONS)}, got {value!r}{hint}")


def check_device_supports(mixed_precision, device):
    """Raise :class:`utils.errors.UserError` when ``device`` cannot run ``mixed_precision``."""
    if mixed_precision and torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported(False):
        raise UserError(f"train_config.mixed_precision {mixed_precision!r} needs a GPU with native bfloat16 "
                        f"(Ampere or later); {torch.cuda.get_device_name(device)} has none: set it to false")


def autocast(device, mixed_precision):
    """The context of a forward pass: autocast to ``mixed_precision`` on ``device``, or nothing.

    The cast weights are not cached (``cache_enabled=False``): each weight is used once a pass,
    and a cache would stop a CUDA graph from capturing the pass.
    """
    if not mixed_precision:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=MIXED_PRECISIONS[mixed_precision], cache_enabled=False)


def network_field(net, moving, fixed, mixed_precision):
    """``net(moving, fixed)`` under :func:`autocast` (on the inputs' device), returned in float32:
    a training step's network in mixed precision, and what follows it (warp, loss) in float32."""
    with autocast(moving.device, mixed_precision):
        flow = net(moving, fixed)
    return flow.float()


def _autocast_on():
    return torch.is_autocast_enabled("cuda") or torch.is_autocast_enabled("cpu")


def _float32(value):
    if isinstance(value, torch.Tensor) and value.dtype in _LOW:
        return value.float()
    return value


def in_float32(fn):
    """Decorator: run ``fn`` with autocast off and its bfloat16 / float16 tensor arguments in float32.

    Outside autocast it calls ``fn`` as it is (one check, no cast), so float32 and float64 runs
    are untouched.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not _autocast_on():
            return fn(*args, **kwargs)
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return fn(*[_float32(a) for a in args], **{k: _float32(v) for k, v in kwargs.items()})

    return wrapper


__all__ = ["MIXED_PRECISIONS", "autocast", "check_device_supports", "check_mixed_precision", "in_float32",
           "network_field"]
