"""CUDA graphs for inference: a captured call replayed as one launch instead of hundreds.

On a GPU, a 2D FNOReg forward pass is bound by the host launching its ~500 small operations
(about 8 ms per pair on an H200, where the GPU's own work is a fraction of that; see
``benchmarks/README.md``). A CUDA graph records the kernels of one call with its input shapes
once and replays them with a single launch; the host cost then no longer grows with the number of
operations.

:class:`GraphCache` wraps a function of tensors. On CUDA, with autograd off, each new input
signature (shapes, dtypes, device) is captured once, after an eager warm-up on a side stream
(which also creates cuFFT/cuBLAS plans and fills the weight caches that the graph then reads);
later calls with that signature copy their inputs into the graph's static inputs, replay it and
return a copy of its outputs. Everywhere else it calls the function as it is.

What keeps a replay honest:

- **No host synchronisation inside.** A graph replays kernels only; Python branches on tensor
  values (``bool(x.any())``, ``.item()``, ``.tolist()``), data-dependent shapes (``nonzero``,
  boolean masks) and copies between host and device would be frozen at their captured values
  or fail to capture. The last warm-up call runs under :class:`SyncScan`, which lists such
  operations (the earlier ones may fill lazy caches, which a replay never repeats); a function that issues any is never captured and runs eagerly (the reason is kept
  in :attr:`GraphCache.eager_reasons`). Models split their forward pass so that the part before
  such a branch is captured (``graph_parts``, e.g. :meth:`models.fnoreg.FNOReg.graph_parts`).
- **Checked once against the eager result.** After capture the graph is replayed on other
  values than the capture's (:func:`probe_values`) and compared with the eager call on them; any
  difference beyond float rounding drops the graph and the signature runs eagerly from then on.
  (Checked on the capture's own inputs, a graph that recorded nothing would pass: its outputs
  already hold them. That happens when the capture runs on another device's stream, which is
  why the capture is also pinned to the inputs' device and an empty graph is an error.)
- **Parameters that change invalidate every graph.** A graph reads the addresses of the tensors
  it saw. ``GraphCache(fn, watch=model)`` records the data pointer and version of every
  parameter and buffer at capture and, on each call, drops all graphs when any differs (an
  optimiser step, ``load_state_dict``, a device move).
- **Lifetime.** A graph reads tensors made outside it (parameters, a spectral layer's rebuilt
  weight inside :func:`models.spectral.weight_cache`, the warp's cached sampling grid): each
  graph holds a reference to every tensor its scanned warm-up call read and did not make, so
  none of them is freed and reused under it while it lives. :func:`models.graphed.inference_session`
  frees the graphs before the weight cache.

Each captured signature holds its own memory pool (about one forward pass's activations); at
most ``max_graphs`` are kept, the oldest dropped first.
"""

import collections
import contextlib
import warnings

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that read a tensor's value on the host, or whose output shape depends on values.
SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose",
    "aten::nonzero", "aten::nonzero_static", "aten::argwhere", "aten::masked_select", "aten::_unique",
    "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::unique_dim_consecutive",
    "aten::bincount", "aten::histc", "aten::repeat_interleave.Tensor",
})
_INDEXING = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})


def _tensors(tree):
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, (list, tuple)):
        for item in tree:
            yield from _tensors(item)
    elif isinstance(tree, dict):
        for item in tree.values():
            yield from _tensors(item)


class SyncScan(TorchDispatchMode):
    """Records the operations of a call that a CUDA graph cannot replay faithfully.

    Also collects in ``external`` every tensor the call reads that it did not make (parameters,
    cached weights, a cached sampling grid, the inputs): a graph of the call reads their memory,
    so it must keep them alive.

    ``found`` lists, in order, the name of each operation that synchronises with the host or
    has a value-dependent output shape (:data:`SYNC_OPS`, indexing with a boolean mask), each
    one whose tensors lie on more than one device (a copy between host and device, or a host
    tensor read by a device kernel, whose value a graph would freeze), and each tensor made from
    host data on a device (``torch.tensor(values, device=...)``, ``x[[i, j]]``, seen one level up, as a torch
    function: a copy from pageable memory, which on CUDA waits for the stream), and each Python
    number assigned into a device tensor (``x[i] = 1.0``, :data:`_WRITES`; in a backward pass too).
    Works on any device, so the same check runs in CPU tests, with the ``meta`` device standing
    in for a GPU.
    """

    def __init__(self):
        super().__init__()
        self.found = []
        self.external = []
        self._known = set()  # storages made by the call or already listed as external
        self._numbers = {}  # storage -> tensor: Python numbers made tensors on meta (kept alive)
        self._from_host = _FromHostData(self.found)

    def __enter__(self):
        self._from_host.__enter__()
        try:
            return super().__enter__()
        except BaseException:
            self._from_host.__exit__(None, None, None)
            raise

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._from_host.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        overload = f"{name}.{func._overloadname}" if func._overloadname != "default" else name
        for t in _tensors((args, kwargs)):
            if t.device.type != "meta" and _storage(t) not in self._known:
                self._known.add(_storage(t))
                self.external.append(t)
        out = func(*args, **kwargs)
        self._known.update(_storage(t) for t in _tensors(out) if t.device.type != "meta")
        if name == "aten::scalar_tensor" and out.device.type == "meta":  # see _WRITES
            self._numbers[out.untyped_storage()._cdata] = out
        if name in SYNC_OPS or overload in SYNC_OPS:
            self.found.append(name)
        elif name in _WRITES and args[0].device.type != "cpu" and self._is_number(args[_WRITES[name]]):
            self.found.append(f"{name} (a Python number assigned into a {args[0].device.type} tensor)")
        elif name in _INDEXING and any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:2])):
            self.found.append(f"{name} (boolean mask)")
        else:
            devices = {t.device for t in _tensors((args, kwargs, out))}
            if len(devices) > 1:
                self.found.append(f"{name} ({', '.join(sorted(str(d) for d in devices))})")
        return out

    def _is_number(self, t):
        return torch.is_tensor(t) and t.untyped_storage()._cdata in self._numbers


# ``x[i] = number`` lowers to these writes (argument index of the value). On CUDA PyTorch makes the
# number a host tensor: a copy from the host (one element) or a host value frozen into a fill, both
# flagged as crossing devices. On the ``meta`` device it makes the number a ``scalar_tensor`` there,
# written by these ops; :class:`SyncScan` flags that, so CPU tests see what a GPU would do (on CUDA
# itself a device ``scalar_tensor`` copied in would be a device-to-device copy, and is not flagged).
_WRITES = {"aten::copy_": 1, "aten::index_put_": 2, "aten::_index_put_impl_": 2}


class _FromHostData(TorchFunctionMode):
    """Flags ``torch.tensor(values, device=...)``, ``torch.as_tensor`` and ``x[[i, j]]`` onto a device.

    PyTorch makes such a tensor on the host and copies it below any dispatch mode (on the
    ``meta`` device it copies nothing), so :class:`SyncScan` cannot see the copy; on CUDA it is
    a copy from pageable memory that waits for the stream, and a capture fails on it. Indexing a
    device tensor with a Python list makes the index tensor the same way (on ``meta`` directly
    there). A torch function mode is not active in a backward pass: there only the dispatch
    level's checks apply.
    """

    def __init__(self, found):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
            device = torch.device(kwargs["device"])
            source = args[0] if args else kwargs.get("data")
            if device.type != "cpu" and not (torch.is_tensor(source) and source.device == device):
                self.found.append(f"torch.{func.__name__} (host data copied to {device.type})")
        elif (func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and len(args) > 1
              and torch.is_tensor(args[0]) and args[0].device.type != "cpu" and _has_list(args[1])):
            self.found.append(f"Tensor.{func.__name__} (a Python list as index: host data copied to "
                              f"{args[0].device.type})")
        return func(*args, **kwargs)


def _has_list(index):
    return isinstance(index, list) or (isinstance(index, tuple) and any(isinstance(i, list) for i in index))


def _storage(t):
    return t.untyped_storage().data_ptr(), t.device


def host_syncs(fn, *args):
    """``(fn(*args), names)``: the result and the operations :class:`SyncScan` flags in the call."""
    with SyncScan() as scan:
        out = fn(*args)
    return out, scan.found


def _outputs(out):
    """The tensors of ``out`` (a tensor or a tuple of tensors) and a function rebuilding it."""
    if torch.is_tensor(out):
        return [out], lambda ts: ts[0]
    if isinstance(out, tuple) and all(torch.is_tensor(t) for t in out):
        return list(out), tuple
    raise TypeError(f"a graphed function must return a tensor or a tuple of tensors, got {type(out).__name__}")


def close_enough(a, b):
    """Whether ``a`` (a replay) equals ``b`` (the eager result) up to float rounding; flags and indices exactly."""
    if not (b.is_floating_point() or b.is_complex()):  # flags, indices: exactly
        return torch.equal(a, b)
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-6 + 1e-5 * scale))


def probe_values(t):
    """Other values of ``t``'s shape, dtype and device, to check a replay on (not the capture's).

    Floating point: the tensor mirrored along its last axis, halved, plus a ramp (so that no
    tensor, a constant one included, maps to itself); integers: mirrored.
    """
    with torch.inference_mode(False), torch.no_grad():
        mirrored = t.flip(-1)
        if not t.is_floating_point():
            return mirrored
        ramp = torch.linspace(0.0, 0.25, t.shape[-1], device=t.device, dtype=t.dtype)
        return mirrored * 0.5 + ramp


@contextlib.contextmanager
def refuse_empty_graphs():
    """Turn PyTorch's warning that a captured CUDA graph is empty into a RuntimeError.

    An empty graph was captured on the wrong device or stream: its replays would do nothing.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if "CUDA Graph is empty" in str(w.message):
            raise RuntimeError("the CUDA graph recorded nothing (captured on another device or stream)")
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class _Entry:
    __slots__ = ("graph", "inputs", "outputs", "rebuild", "keep")


class PerSignature:
    """Graphs kept per input signature (shapes, dtypes, devices); the base of the graph caches.

    A subclass captures (:meth:`_capture`: the entry, or None with the eager result, the reason
    kept in :attr:`eager_reasons`) and replays (:meth:`_replay`); :meth:`_watched_state` names
    what, when it changes, drops every graph. At most ``max_graphs`` entries are kept, the least
    recently used dropped first.

    Attributes
    ----------
    replays : int
        Calls answered by a graph.
    eager_reasons : dict
        Signature -> why it runs eagerly (operations found, a failed capture or check).
    """

    def __init__(self, max_graphs):
        self.max_graphs = max_graphs
        self.graphs = collections.OrderedDict()
        self.eager_reasons = {}
        self.replays = 0
        self._state = None

    def _watched_state(self):
        return None

    def clear(self):
        """Drop every graph (and its memory pool); signatures found uncapturable stay eager."""
        self.graphs.clear()
        self._state = None

    def usage(self):
        """``{"replays": calls a graph answered, "eager": why any signature ran eagerly}``, for a record."""
        return {"replays": self.replays, "eager": sorted(set(self.eager_reasons.values()))}

    # -- the CUDA calls the CPU tests stand in for (subclasses add their capture) -----------------
    @staticmethod
    def _eligible(tensor):
        """Whether an input lets the call be graphed: a CUDA tensor."""
        return tensor.is_cuda

    @staticmethod
    def _synchronize(device):
        torch.cuda.synchronize(device)

    def _graphed_call(self, inputs, eager):
        """The replay for ``inputs``' signature (captured first if new), or ``eager(*inputs)``."""
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in inputs)
        if key in self.eager_reasons:
            return eager(*inputs)
        state = self._watched_state()
        if state != self._state:
            self.clear()
            self._state = state
        entry = self.graphs.get(key)
        if entry is None:
            entry, out = self._capture(key, inputs)
            if entry is None:
                return out
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        self.replays += 1
        return self._replay(entry, inputs)


class GraphCache(PerSignature):
    """``fn(*tensors)`` replayed from a CUDA graph per input signature (see the module docstring).

    Parameters
    ----------
    fn : callable
        A function of tensors returning a tensor or a tuple of tensors; called with autograd off.
    watch : torch.nn.Module, optional
        Module whose parameters and buffers ``fn`` reads: when any of them changes (data pointer
        or version), every graph is dropped and captured again.
    max_graphs : int
        Signatures kept; the least recently used is dropped first.
    warmup : int
        Eager calls before a capture; the last one is scanned with :class:`SyncScan` (the
        earlier ones may fill lazy caches, which a replay does not repeat).

    Attributes
    ----------
    replays, eager_reasons
        As in :class:`PerSignature`.
    """

    def __init__(self, fn, watch=None, max_graphs=4, warmup=2):
        super().__init__(max_graphs)
        self.fn = fn
        self.watch = watch
        self.warmup = max(1, warmup)

    def _watched_state(self):
        if self.watch is None:
            return None
        return tuple((t.data_ptr(), t._version) for t in (*self.watch.parameters(), *self.watch.buffers()))

    def __call__(self, *inputs):
        if torch.is_grad_enabled() or not inputs or not all(torch.is_tensor(t) and self._eligible(t) for t in inputs):
            return self.fn(*inputs)
        return self._graphed_call(inputs, self.fn)

    def _replay(self, entry, inputs):
        for static, t in zip(entry.inputs, inputs):
            static.copy_(t)
        entry.graph.replay()
        return entry.rebuild([t.clone() for t in entry.outputs])

    def _capture(self, key, inputs):
        """Warm up, scan, capture and check one signature: (entry or None, the eager result)."""
        device = inputs[0].device
        # Ordinary tensors, not inference tensors: later calls may copy into them outside inference mode.
        with torch.inference_mode(False), torch.no_grad():
            static = [t.clone() for t in inputs]
        with self._warm_up_stream(device):
            for _ in range(self.warmup - 1):  # fills lazy caches (weights, grids, FFT plans)
                self.fn(*static)
            with SyncScan() as scan:  # the last warm-up call is the one a replay stands for
                expected = self.fn(*static)
        expected_tensors, rebuild = _outputs(expected)
        if scan.found:
            self.eager_reasons[key] = "host synchronisation: " + ", ".join(dict.fromkeys(scan.found))
            return None, expected
        entry = _Entry()
        entry.inputs, entry.rebuild = static, rebuild
        entry.keep = scan.external  # what the graph reads and did not make: a freed cache would be garbage
        try:
            entry.graph, entry.outputs = self._record(static)
            # Checked on other values than the capture's: a graph that recorded nothing (captured on
            # another device's stream) still holds the capture's outputs, and would pass on those.
            probe = [probe_values(t) for t in static]
            probe_expected = _outputs(self.fn(*probe))[0]
            for t, value in zip(static, probe):
                t.copy_(value)
            entry.graph.replay()
            self._synchronize(device)
        except RuntimeError as error:  # a capture the scan did not foresee: run this signature eagerly
            self._synchronize(device)
            self.eager_reasons[key] = f"capture failed: {str(error).splitlines()[0]}"
            warnings.warn(f"CUDA graph capture failed, running eagerly: {self.eager_reasons[key]}", stacklevel=4)
            return None, expected
        if len(entry.outputs) != len(probe_expected) or not all(
                close_enough(a, b) for a, b in zip(entry.outputs, probe_expected)):
            self.eager_reasons[key] = "the replay differed from the eager call"
            warnings.warn("a CUDA graph's replay differed from the eager call; running eagerly", stacklevel=4)
            return None, expected
        return entry, expected

    # -- the CUDA calls, one method each (the CPU tests stand in for them) ------------------------
    @staticmethod
    @contextlib.contextmanager
    def _warm_up_stream(device):
        """Run the warm-up on a side stream, as PyTorch's CUDA-graph recipe asks."""
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream(device).wait_stream(side)

    def _record(self, static):
        """Capture ``fn(*static)``: (the graph, its output tensors).

        On the inputs' device: ``torch.cuda.graph`` captures on a stream of the *current* device,
        and a model on another GPU (``--gpu_num 1``) would run eagerly beside an empty graph.
        """
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(static[0].device), refuse_empty_graphs():
            with torch.cuda.graph(graph):
                outputs = _outputs(self.fn(*static))[0]
        return graph, outputs


__all__ = ["GraphCache", "PerSignature", "SyncScan", "close_enough", "host_syncs", "probe_values",
           "refuse_empty_graphs", "SYNC_OPS"]
