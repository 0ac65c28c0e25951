"""neuraloperator's ``SpectralConv`` with a faster contraction.

The spectral layer *is* neuraloperator's ``SpectralConv`` (weights, factorisation, mode
selection, FFTs); only its contraction function is replaced. neuraloperator contracts the
retained modes with a generic ``einsum`` that, on a CPU, costs far more than the FFTs; here the
weight is reconstructed once per call (dense or Tucker) and applied as one batched complex
matrix product over the modes, which is the same arithmetic.
"""

import torch
from neuralop.layers.spectral_convolution import SpectralConv


def contract_matmul(x, weight, separable=False):
    """Apply per-mode channel mixing ``out[b, o, k] = sum_i x[b, i, k] * w[i, o, k]``.

    Parameters
    ----------
    x : torch.Tensor
        Complex tensor (batch, in_channels, *modes).
    weight : torch.Tensor or tltorch.FactorizedTensor
        (in_channels, out_channels, *modes); factorised weights are reconstructed first.
    separable : bool
        Must be False (separable weights have no channel mixing and are not used here).

    Returns
    -------
    torch.Tensor
        Complex tensor (batch, out_channels, *modes).
    """
    if separable:
        raise NotImplementedError("separable spectral weights are not supported")
    if not torch.is_tensor(weight):
        weight = weight.to_tensor()
    batch, c_in, *modes = x.shape
    c_out = weight.shape[1]
    # (M, B, I) @ (M, I, O) -> (M, B, O), where M is the number of retained modes.
    xm = x.reshape(batch, c_in, -1).permute(2, 0, 1)
    wm = weight.reshape(c_in, c_out, -1).permute(2, 0, 1)
    out = torch.bmm(xm, wm.to(xm.dtype))
    return out.permute(1, 2, 0).reshape(batch, c_out, *modes)


class FastSpectralConv(SpectralConv):
    """``neuralop.layers.spectral_convolution.SpectralConv`` with :func:`contract_matmul`.

    Accepts exactly the arguments of ``SpectralConv``; forces the 'reconstructed'
    implementation (the factorised weight is rebuilt once per call, then contracted densely).
    """

    def __init__(self, *args, **kwargs):
        kwargs["implementation"] = "reconstructed"
        if kwargs.get("separable", False):
            raise NotImplementedError("separable spectral weights are not supported")
        super().__init__(*args, **kwargs)
        self._contract = contract_matmul
