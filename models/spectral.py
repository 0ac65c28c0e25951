"""neuraloperator's ``SpectralConv``, with its factorised weight rebuilt once for inference.

The spectral layer *is* neuraloperator's ``SpectralConv``: weights, factorisation, mode
selection, FFTs and the contraction are all its own. The one change: with a factorised (e.g.
Tucker) weight, neuraloperator reconstructs the dense weight from its factors on every call,
which for the published presets costs about as much as the rest of the layer at batch size 1.
While gradients are off (evaluation, validation, ``register.py``) this class keeps the
reconstructed weight and reuses it until a factor changes (an optimizer step, a state-dict load,
a device move), which it detects from the factors' storage and version counters. During
training nothing is cached.
"""

import torch
from neuralop.layers.spectral_convolution import SpectralConv as _SpectralConv
from neuralop.layers.spectral_convolution import _contract_dense


class SpectralConv(_SpectralConv):
    """``neuralop.layers.spectral_convolution.SpectralConv`` that caches its dense weight in inference.

    Accepts exactly the arguments of neuraloperator's class (the 'reconstructed' implementation
    is used, its default). Results are identical to neuraloperator's layer.
    (The cache key is the storage, version and device of every weight parameter plus the sliced
    weight's shape, which depends on the input resolution.)
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("implementation", "reconstructed")
        super().__init__(*args, **kwargs)
        if self.implementation == "reconstructed" and not self.separable:
            self._contract = self._contract_cached
        self._cache = None

    def _contract_cached(self, x, weight, separable=False):
        params = list(self.weight.parameters())
        # Parameters created under torch.inference_mode() have no version counter: no cache then.
        if not torch.is_tensor(weight) and not torch.is_grad_enabled() and not any(p.is_inference() for p in params):
            # ``weight`` is this call's slice of self.weight; the key uses the module's own parameters.
            params = tuple((p.data_ptr(), p._version, p.device) for p in params)
            key = (params, tuple(weight.shape))
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, weight.to_tensor())
            weight = self._cache[1]
        return _contract_dense(x, weight, separable=separable)
