"""CUDA graphs for training: a model's forward and backward pass replayed per input shape.

On a GPU a 2D FNOReg training step is bound by the host launching its operations: FNOReg
small's forward pass dispatches about 850 and its backward pass about 1,150 (counted on the CPU
at batch 8), so a step of 8 pairs took about 36 ms on an H200 where VoxelMorph vxm2's took 6 ms
(``benchmarks/README.md``). PyTorch's ``torch.cuda.make_graphed_callables`` captures a module's
forward pass and its backward pass as two CUDA graphs behind one autograd function; the warp,
the loss, gradient clipping and the optimizer stay eager, and they are a few hundred operations.

:class:`TrainingGraphs` stands in for the model in the training loop (``train_<d>d.py
--cuda_graphs``). In training mode with autograd on, on CUDA, each input signature (shapes,
dtypes, device) is captured once and replayed after; everything else (validation, evaluation,
the CPU) calls the model as it is. What keeps it honest:

- **No host synchronisation.** One eager forward and backward pass runs under
  :class:`utils.cuda_graphs.SyncScan` first (after one more that fills what is kept per shape);
  a model whose step reads a value on the host, or copies host data to the device, is never
  captured and trains eagerly, with the reason in :attr:`TrainingGraphs.eager_reasons`.
- **Nothing the capture does is kept.** Its warm-up passes update batch-norm running statistics
  and the like: every buffer is restored after the capture, and parameter gradients are never
  touched (the passes use ``torch.autograd.grad``).
- **Checked once against the eager step.** After the capture, the graphed and the eager forward
  and backward passes run on the same batch (other values than the capture's, so that a graph
  that recorded nothing cannot pass) from the same random state; the output must agree to float
  rounding and every parameter's gradient to 5 % in norm (:func:`first_differing_gradient`: the
  replay may run other cuDNN algorithms), or the signature trains eagerly from then on
  (with a warning). A failed capture does the same, and so does an empty one (captured on
  another device's stream; the capture is pinned to the inputs' device).
- **Replays follow the parameters.** An optimizer updates the parameters in place, which the
  graphs read; moving them (``model.to``, a new storage) drops every graph.
- **What a graph reads stays alive.** Each captured signature holds every tensor its scanned
  passes read and did not make, the constants models keep in LRU caches included: evicted from
  a cache and freed, one would leave a replay reading reused memory.
- The replayed outputs live in the graph's memory: a step's flow is overwritten by the next
  step's, as in any CUDA-graph training loop. The training loop keeps no flow across steps.

Not used with activation checkpointing (a recomputation inside the backward graph is not worth
the risk), under DistributedDataParallel (its gradient hooks run outside a graph) or with
``multires`` (a new shape nearly every step, each capture costing about 20 eager steps); the
trainer says so and trains eagerly. Opt-in. First run on an NVIDIA H200 on 2026-11-30: the 2D demo
trained with every one of its 600 steps replayed, 4x faster an epoch, to the eager run's Dice
(``benchmarks/README.md``, CUDA graphs; ``benchmarks/gpu_check.py`` runs the CUDA tests).
"""

import warnings

import torch

from utils.cuda_graphs import PerSignature, SyncScan, close_enough, probe_values, refuse_empty_graphs


class _Step(torch.nn.Module):
    """The model's call as a module of its own, so the capture patches this forward, not the model's."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, moving, fixed):
        return self.model(moving, fixed)


class TrainingGraphs(PerSignature):
    """``model(moving, fixed)`` with its forward and backward pass replayed from CUDA graphs in training.

    Parameters
    ----------
    model : torch.nn.Module
        A registration model returning one tensor (the field).
    max_graphs : int
        Input signatures kept (each holds one step's activations); the least recently used is
        dropped first. (The trainer does not use graphs with ``multires``, which draws a new
        size nearly every step.)

    Attributes
    ----------
    replays : int
        Training calls answered by graphs.
    eager_reasons : dict
        Signature -> why it trains eagerly.
    """

    def __init__(self, model, max_graphs=4):
        super().__init__(max_graphs)
        self.model = model

    def __getattr__(self, name):  # the trainer reads the model's attributes through its net
        model = self.__dict__.get("model")
        if model is None:  # not built yet (a copy being made)
            raise AttributeError(name)
        return getattr(model, name)

    def _watched_state(self):
        # Data pointers only: an optimizer step bumps every version, and the graphs read in place.
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers()))

    def __call__(self, moving, fixed):
        if not (self.model.training and torch.is_grad_enabled() and self._eligible(moving)
                and self._eligible(fixed)):
            return self.model(moving, fixed)
        return self._graphed_call((moving, fixed), self.model)

    @staticmethod
    def _replay(entry, inputs):
        return entry.graphed(*inputs)

    # -- capture ------------------------------------------------------------------------------
    def _capture(self, key, inputs):
        """Scan, capture and check one signature: (the graphed step, None), or (None, the eager call)."""
        moving, fixed = inputs
        model = self.model
        params = [p for p in model.parameters() if p.requires_grad]
        saved = [b.detach().clone() for b in model.buffers()]
        static = (moving.detach().clone(), fixed.detach().clone())
        try:
            with torch.random.fork_rng(devices=[moving.device] if moving.is_cuda else []):
                reason, grad_out, keep = self._scan(static, params)
                if reason is None:
                    graphed = self._make_graphed(_Step(model), static)
                    reason = self._check(graphed, static, params, grad_out, saved)
        except (RuntimeError, AssertionError) as error:  # make_graphed_callables asserts its preconditions
            self._synchronize(moving.device)
            reason = f"capture failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        finally:
            _restore(model, saved)
        if reason is not None:
            self.eager_reasons[key] = reason
            if not reason.startswith("host synchronisation"):
                warnings.warn(f"CUDA graph of the training step not used, training eagerly: {reason}", stacklevel=4)
            return None, model(moving, fixed)
        return _Entry(graphed, keep), None

    def _scan(self, static, params):
        """(reason or None, the output gradient the check uses, the tensors the passes read and did
        not make), from eager passes under the scan."""
        model = self.model
        out = model(*static)  # fills what is kept per shape, as the first eager step would
        gen = torch.Generator().manual_seed(0)
        grad_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
        torch.autograd.grad(out, params, grad_out, allow_unused=True)
        with SyncScan() as scan:
            out = model(*static)
            torch.autograd.grad(out, params, grad_out, allow_unused=True)
        if scan.found:
            return "host synchronisation: " + ", ".join(dict.fromkeys(scan.found)), grad_out, None
        return None, grad_out, scan.external

    def _check(self, graphed, static, params, grad_out, saved):
        """None when the graphed pass equals the eager one (output and gradients), else why not.

        On other values than the capture's (:func:`utils.cuda_graphs.probe_values`): a graph that
        recorded nothing still holds the capture's outputs and would pass on those.
        """
        probe = [probe_values(t) for t in static]
        results = []
        for run in (self.model, graphed):
            _restore(self.model, saved)
            torch.manual_seed(0)  # the same random draws (stochastic depth) on both sides
            out = run(*probe)
            grads = torch.autograd.grad(out, params, grad_out, allow_unused=True)
            results.append((out.detach().clone(), [None if g is None else g.detach().clone() for g in grads]))
        (out_e, grads_e), (out_g, grads_g) = results
        if not close_enough(out_g, out_e):
            return "the replayed forward pass differed from the eager one"
        bad = first_differing_gradient(grads_g, grads_e)
        if bad is not None:
            index, detail = bad
            name = next((n for n, q in self.model.named_parameters() if q is params[index]), "a parameter")
            return f"the replayed gradient of {name} differed from the eager one{detail}"
        return None

    # -- the CUDA calls, one method each (the CPU tests stand in for them) ------------------------
    @staticmethod
    def _make_graphed(step, static):
        """Capture ``step``'s forward and backward pass on ``static`` inputs; returns the graphed module.

        On the inputs' device: PyTorch captures on streams of the current device, and a model on
        another GPU would run eagerly beside empty graphs (an error here).
        """
        with torch.cuda.device(static[0].device), refuse_empty_graphs():
            return torch.cuda.make_graphed_callables(step, static, num_warmup_iters=3, allow_unused_input=True)


class _Entry:
    """A captured signature: the graphed step, and every tensor its passes read and did not make.

    The graphs read those tensors' memory: the parameters, but also constants that models keep in
    LRU caches (the real FFT's adjoint weights, TransMorph's shift masks, the unit scale). A cache
    that drops one would free memory a replay still reads (garbage, silently), so the entry holds
    them as :class:`utils.cuda_graphs.GraphCache` does.
    """

    def __init__(self, graphed, keep):
        self.graphed = graphed
        self.keep = keep


def first_differing_gradient(got, expected, rtol=0.05, floor=0.01):
    """(index, detail) of the first gradient in ``got`` that differs from ``expected``, or None.

    Compared per parameter in norm: ``|got - expected| <= rtol * max(|expected|, floor * the
    largest |expected|)``, the rule of the CUDA-against-CPU tests (``tests/models/test_cuda.py``).
    Not float rounding: on a GPU the replay and the eager pass may run other cuDNN/cuBLAS
    algorithms (chosen under capture with other workspaces), with TF32 convolutions differing by
    about 1e-3, and a gradient that is zero in exact arithmetic (a bias before a batch norm) holds
    only rounding noise, measured against the model's largest gradient. The errors the check is
    for (a stale or empty graph, state the capture left behind, other random draws) are O(1).
    ``None`` must match ``None``.
    """
    norms = [float(torch.linalg.vector_norm(g)) for g in expected if g is not None]
    largest = max(norms, default=0.0)
    for i, (a, b) in enumerate(zip(got, expected)):
        if (a is None) != (b is None):
            return i, " (a gradient on one side only)"
        if a is None:
            continue
        if a.shape != b.shape:
            return i, f" (shape {tuple(a.shape)} against {tuple(b.shape)})"
        err, norm = float(torch.linalg.vector_norm(a - b)), float(torch.linalg.vector_norm(b))
        if not err <= rtol * max(norm, floor * largest) + 1e-12:  # a NaN fails too
            return i, f" (difference {err:.3g} in norm, its norm {norm:.3g}, the model's largest {largest:.3g})"
    return None


def _restore(model, saved):
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


__all__ = ["TrainingGraphs", "first_differing_gradient"]
