"""A registration model's inference call replayed from CUDA graphs (``--cuda_graphs``).

:func:`inference_session` is the block in which evaluation, ``register.py`` and the speed
benchmark run a model: the spectral weight cache (:func:`models.spectral.weight_cache`) and, when
asked for, a :class:`GraphedModel`, which replays the model's call from a CUDA graph per input
shape (:mod:`utils.cuda_graphs`). A model may split its call with ``graph_parts()`` into a
captured core and an eager finish (:meth:`models.fnoreg.FNOReg.graph_parts`); a model without it
is captured whole when its forward pass is free of host synchronisation, and runs eagerly
otherwise. On the CPU, in training mode or with autograd on, the model runs as it is.

Opt-in: the graphs are checked against the eager call when captured. First run and timed on a
GPU (an NVIDIA H200) on 2026-11-30 (``benchmarks/gpu_check.py``; ``benchmarks/README.md``).
"""

import contextlib

from utils.cuda_graphs import GraphCache

from .spectral import weight_cache


class GraphedModel:
    """``model(moving, fixed)``, replayed from a CUDA graph per input shape on CUDA.

    Parameters
    ----------
    model : torch.nn.Module
        A registration model in evaluation mode; call it inside
        :func:`models.spectral.weight_cache` (as :func:`inference_session` does).
    max_graphs : int
        Input shapes whose graphs are kept (each holds about one forward pass's activations).
    """

    def __init__(self, model, max_graphs=4):
        self.model = model
        parts = getattr(model, "graph_parts", None)
        core, self.finish = parts() if parts is not None else (model, None)
        self.graphs = GraphCache(core, watch=model, max_graphs=max_graphs)

    def __call__(self, moving, fixed):
        if self.model.training:
            return self.model(moving, fixed)
        out = self.graphs(moving, fixed)
        if self.finish is None:
            return out
        return self.finish(*out) if isinstance(out, tuple) else self.finish(out)

    @property
    def replays(self):
        """Calls answered by a graph so far."""
        return self.graphs.replays

    def usage(self):
        """What the graphs did, for a record (:meth:`utils.cuda_graphs.PerSignature.usage`)."""
        return self.graphs.usage()

    @property
    def eager_reasons(self):
        """Input signature -> why it runs eagerly (see :class:`utils.cuda_graphs.GraphCache`)."""
        return self.graphs.eager_reasons

    def clear(self):
        """Free every graph."""
        self.graphs.clear()


@contextlib.contextmanager
def inference_session(model, cuda_graphs=False):
    """The block to run ``model`` for inference in: yields the callable to use instead of it.

    Inside, each spectral layer keeps its rebuilt weight (:func:`models.spectral.weight_cache`);
    with ``cuda_graphs`` the yielded :class:`GraphedModel` also replays calls on CUDA from
    graphs, which are freed before the weight cache they read. Without, it yields ``model``.
    """
    with weight_cache(model):
        if not cuda_graphs:
            yield model
            return
        graphed = GraphedModel(model)
        try:
            yield graphed
        finally:
            graphed.clear()
