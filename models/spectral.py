"""neuraloperator's ``SpectralConv`` with a forward pass that is right at every size, and fast.

The spectral layer keeps neuraloperator's weights, factorisations (dense, Tucker, CP, TT), mode
convention (``n_modes`` low frequencies of both signs on every axis but the last, ``n//2 + 1``
non-negative ones on the last) and FFT normalisation. Its forward pass is replaced, because
neuraloperator 2.0.0's has two defects that give wrong fields at odd sizes:

- it undoes the frequency shift with ``fftshift`` where ``ifftshift`` is needed, which on every
  axis but the last moves each kept mode by one bin when that axis has an odd length (fixed
  upstream after 2.0.0, neuraloperator PR #688);
- when an axis is shorter than the kept modes and the difference is odd, it slices the weight
  one bin off centre.

Here every kept frequency ``f`` of a non-last axis is read from FFT bin ``f mod n`` and uses
weight index ``f + n_modes // 2``, whatever the parity of ``n``; frequencies the input grid
cannot hold are dropped. At even sizes the result is exactly neuraloperator's.

Three things make it faster than neuraloperator's layer without changing its result:

- pruned transforms: only the kept columns of the last (real-FFT) axis are transformed along the
  other axes, forward and inverse, with that axis moved first so that every complex FFT runs
  along contiguous axes (:mod:`models.spectral_ops`);
- in training, a hand-written backward (:class:`models.spectral_ops.SpectralFunction`): the
  adjoint chain, about the cost of one more forward pass, where autograd through the separate
  operations took three and a half;
- the complex contraction runs as one real batched matrix product over the kept modes, on a
  contiguous (modes, 2 x batch, C) operand and the weight's interleaved real view, instead of a
  complex einsum (whose CPU batched-matmul kernel loops over the batch and whose backward issues
  thousands of small copies). In inference a weight larger than :data:`COMPLEX_MIN_BYTES` is
  multiplied by one complex batched matmul on a contiguous (modes, batch, C) operand instead
  (:func:`contract_complex`).

The factorised weight is rebuilt from its factors on every call, except inside
:func:`weight_cache` (evaluation, validation, ``register.py``), which keeps each layer's dense
weight for the duration of the block and frees it on exit.
"""

import contextlib

import torch
from neuralop.layers.spectral_convolution import SpectralConv as _SpectralConv
from tltorch.factorized_tensors import TuckerTensor

from utils.precision import in_float32

from .batchnorm import fold_caches
from .spectral_ops import (SpectralFunction, add_at_zero_frequency, complex_weight, contract_complex, contract_real,
                           forward_modes, inverse_modes, tucker_weight)


def kept_frequencies(size, kept):
    """Signed frequencies that a ``kept``-mode kernel uses on an axis of ``size`` samples.

    The kernel holds frequencies ``-(kept // 2) .. kept - kept // 2 - 1`` (neuraloperator's
    convention); an axis of ``size`` samples holds ``-(size // 2) .. size - size // 2 - 1``.
    Returns the (low, high) bounds, inclusive, of their intersection.
    """
    low = max(-(kept // 2), -(size // 2))
    high = min(kept - kept // 2 - 1, size - size // 2 - 1)
    return low, high


# Inference weights at least this large use contract_complex. On a 2-core Xeon (4 MiB L2), batch
# 1, twelve distinct weights as in a model, 2 threads (1 thread): 2D, 2220 modes, 32 channels
# (17 MiB) 1.6 -> 1.1 ms a layer (3.2 -> 2.7); 3D, 55680 modes, 12 channels (61 MiB) 8.9 -> 8.2 ms
# (15.5 -> 16.1); but 2D, 1000 modes, 16 channels (2 MiB) 0.25 -> 0.36 ms (0.60 -> 0.82), so
# smaller ones stay real.
COMPLEX_MIN_BYTES = 4 * 2**20


class SpectralConv(_SpectralConv):
    """``neuralop.layers.spectral_convolution.SpectralConv`` with a forward pass right at odd sizes.

    Accepts exactly the arguments of neuraloperator's class. Supported: real input
    (``complex_data=False``), non-separable weights, full precision, no resolution scaling and
    no ``output_shape``; other settings raise ``NotImplementedError`` at construction.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        unsupported = {
            "complex_data": self.complex_data,
            "separable": self.separable,
            "resolution_scaling_factor": self.resolution_scaling_factor is not None,
            "fno_block_precision": self.fno_block_precision != "full",
        }
        bad = [k for k, v in unsupported.items() if v]
        if bad:
            raise NotImplementedError(f"models.spectral.SpectralConv does not support {', '.join(bad)}")
        self._cache_enabled = False
        self._cache = None

    # -- weight ------------------------------------------------------------------------------
    def weight_for(self, slices):
        """Weight of the kept modes ``slices`` (a tuple of slices, one per axis), (M, C_in, C_out).

        The layout of :func:`models.spectral_ops.complex_weight`, used by every contraction;
        kept inside :func:`weight_cache`.
        """
        if self._cache_enabled and not torch.is_grad_enabled():
            key = (slices, tuple((p.data_ptr(), p._version) for p in self.parameters()))
            if self._cache is None or self._cache[0] != key:
                self._cache = None  # free the old one before building the new one
                self._cache = (key, self._build_weight(slices))
            return self._cache[1]
        return self._build_weight(slices)

    def _build_weight(self, slices):
        if isinstance(self.weight, TuckerTensor):
            return tucker_weight(self.weight.core, self.weight.factors, slices)
        return complex_weight(self._dense(slices))

    def _dense(self, slices):
        weight = self.weight[(slice(None), slice(None), *slices)]
        return weight if torch.is_tensor(weight) else weight.to_tensor()

    def clear_cache(self):
        """Drop the cached dense weight (if any)."""
        self._cache = None

    def train(self, mode=True):
        """Set training mode; leaving inference always drops the cached weight."""
        if mode:
            self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    # -- forward -----------------------------------------------------------------------------
    def kept_modes(self, sizes):
        """The kept modes at input ``sizes``: (weight slices, width, lead).

        ``width``: the kept non-negative frequencies of the real FFT along the last axis; per
        lead axis, (low, high, size): the signed frequencies ``low..high`` that both the kernel
        and the grid hold; the slices pick their weights (frequency 0 of a stored axis of ``m``
        entries sits at ``m // 2``).
        """
        kept = list(self.n_modes)  # the last entry is already n // 2 + 1, neuraloperator's convention
        stored = list(self.weight.shape[2:])  # max_n_modes
        width = min(kept[-1], sizes[-1] // 2 + 1)
        slices, lead = [], []
        for size, k, m in zip(sizes[:-1], kept, stored):
            low, high = kept_frequencies(size, k)
            slices.append(slice(m // 2 + low, m // 2 + high + 1))
            lead.append((low, high, size))
        slices.append(slice(0, width))
        return tuple(slices), width, tuple(lead)

    @in_float32  # no bfloat16 FFTs or complex weights
    def forward(self, x, output_shape=None, offset=None):
        """Spectral convolution of ``x`` (B, C_in, *spatial) -> (B, C_out, *spatial), real.

        ``offset``, a (C_out,) tensor, is added to every output sample through the
        zero-frequency coefficient: the same sum up to rounding, without a pass over the output.
        """
        if output_shape is not None and tuple(output_shape) != tuple(x.shape[2:]):
            raise NotImplementedError("models.spectral.SpectralConv does not resample (output_shape)")
        if x.ndim != self.order + 2:
            raise ValueError(f"SpectralConv of order {self.order} needs (B, C, {self.order} spatial axes), "
                             f"got shape {tuple(x.shape)}")
        sizes = x.shape[2:]
        slices, width, lead = self.kept_modes(sizes)

        weight = self.weight_for(slices)
        if torch.is_grad_enabled():
            out = SpectralFunction.apply(x, weight, width, lead, self.fft_norm)
            if offset is not None:
                out = out + offset.view(-1, *[1] * len(sizes))
        else:
            z = forward_modes(x, width, lead, self.fft_norm)
            large = weight.numel() * weight.element_size() >= COMPLEX_MIN_BYTES
            y = (contract_complex if large else contract_real)(z, weight)
            if offset is not None:
                add_at_zero_frequency(y, offset, lead, sizes, self.fft_norm)
            out = inverse_modes(y, sizes[-1], lead, self.fft_norm)
        if self.bias is not None:
            out = out + self.bias
        return out


@contextlib.contextmanager
def weight_cache(model):
    """Reuse every spectral layer's rebuilt dense weight inside this block, for inference.

    Rebuilding a factorised weight from its factors costs about as much as the rest of a layer
    at batch size 1. Inside the block, while gradients are off, each layer rebuilds it once per
    input size and reuses it; any change to a parameter that PyTorch tracks (an optimizer step,
    ``load_state_dict``, a device move, ``train()``) drops it. On exit every cache is freed, so
    nothing is held between validations, and weights written between two blocks (an EMA or
    Lookahead update, even through ``.data``) are always read afresh. Do not write weights
    inside the block. Batch norms folded into their convolutions in evaluation
    (``models.ffc.folded_conv``) are kept the same way.
    """
    layers = [m for m in model.modules() if isinstance(m, SpectralConv)]
    for layer in layers:
        layer._cache_enabled = True
    fold_caches(model, True)
    try:
        yield model
    finally:
        fold_caches(model, False)
        for layer in layers:
            layer._cache_enabled = False
            layer.clear_cache()


def clear_weight_caches(model):
    """Free every spectral layer's cached dense weight in ``model``."""
    for m in model.modules():
        if isinstance(m, SpectralConv):
            m.clear_cache()
