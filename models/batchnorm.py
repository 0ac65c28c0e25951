"""Batch norm followed by ReLU, fused for training on the CPU; running statistics held still
while activation checkpointing recomputes a forward pass (:func:`frozen_statistics`); and the
switch of the cache of batch norms folded into convolutions for inference (:func:`fold_caches`).

PyTorch's CPU batch norm spends most of its forward pass on the statistics (about 1.1 ms for
8x16x80x96 on two threads, where the normalisation alone takes 0.2 ms). Here the statistics are
two vectorised passes (the mean, then the sum of squared deviations, so no cancellation), the
normalisation is PyTorch's inference kernel with those statistics, and the ReLU runs in place on
that fresh output. The backward is PyTorch's own batch-norm backward after the ReLU mask. Same
results as ``F.relu(bn(x))`` to rounding, including the running statistics and
``num_batches_tracked``; measured in ``benchmarks/README.md``.
"""

import contextlib

import torch
import torch.nn.functional as F


def batch_statistics(x):
    """Per-channel mean and biased variance of ``x`` (B, C, *spatial), as batch norm takes them.

    Two vectorised passes, the mean and then the squared deviations (no cancellation); faster
    on the CPU than PyTorch's batch-norm statistics and about five times faster than
    ``torch.var_mean`` over the same axes.
    """
    c = x.shape[1]
    mean = x.mean((0, *range(2, x.ndim)))
    centred = (x - mean.view(1, c, *[1] * (x.ndim - 2))).view(x.shape[0], c, -1)
    return mean, torch.linalg.vecdot(centred, centred).sum(0) / (centred.shape[0] * centred.shape[2])


class _BatchNormReLU(torch.autograd.Function):
    """``relu(batch_norm(x))`` with batch statistics; returns (y, mean, biased variance)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        mean, var = batch_statistics(x)
        y = F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps).relu_()
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps), y)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):
        x, weight, mean, invstd, y = ctx.saved_tensors
        grad = torch.ops.aten.threshold_backward(grad, y, 0)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                weight is not None and ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad, x, weight, None, None, mean, invstd, True, ctx.eps, mask)
        return gx, gw, gb, None


def _fusable(bn, x):
    """Training-mode batch statistics on a CPU tensor of at least one sample per channel."""
    return (bn.training and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and x.numel() > x.shape[1] and (bn.weight is None) == (bn.bias is None))


def batch_norm_relu(bn, x):
    """``F.relu(bn(x))``, fused on the CPU in training mode (:class:`_BatchNormReLU`).

    Parameters
    ----------
    bn : torch.nn.modules.batchnorm._BatchNorm
        The batch norm; its running statistics and ``num_batches_tracked`` are updated exactly
        as its own forward pass would.
    x : torch.Tensor
        (B, C, *spatial).

    Returns
    -------
    torch.Tensor
        ``relu(bn(x))``.
    """
    if not _fusable(bn, x):
        return F.relu(bn(x))
    y, mean, var = _BatchNormReLU.apply(x, bn.weight, bn.bias, bn.eps)
    if bn.track_running_stats and bn.running_mean is not None:
        # nn.modules.batchnorm._BatchNorm.forward's momentum rule, and the unbiased variance.
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        n = x.numel() // x.shape[1]
        with torch.no_grad():
            bn.running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            bn.running_var.mul_(1 - factor).add_(var * (n / max(n - 1, 1)), alpha=factor)
    return y


def _batch_norms(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def frozen_statistics(module):
    """Batch norms inside ``module`` normalise with batch statistics but update nothing.

    For activation checkpointing (``torch.utils.checkpoint``'s ``context_fn``): the backward
    pass runs the forward again, and the batch norms must not fold the same batch into their
    running statistics twice. Momentum 0 keeps the running mean and variance (the cumulative
    rule of ``momentum=None`` included), and ``num_batches_tracked`` is put back on exit.
    """
    norms = [bn for bn in _batch_norms(module) if bn.track_running_stats and bn.running_mean is not None]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    try:
        yield module
    finally:
        for bn, (momentum, tracked) in zip(norms, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)


# Inference: ``models.ffc.folded_conv`` folds a batch norm into the convolution before it. Inside
# ``models.spectral.weight_cache`` each batch norm keeps its folded weights under this attribute,
# checked against its tensors' versions, instead of recomputing them (8 small operations each)
# on every call.
FOLD_CACHE = "_fold_cache"


def fold_caches(model, enabled):
    """Give every batch norm of ``model`` an empty fold cache (``enabled``), or drop them all."""
    for m in _batch_norms(model):
        if enabled:
            setattr(m, FOLD_CACHE, {})
        elif hasattr(m, FOLD_CACHE):
            delattr(m, FOLD_CACHE)
