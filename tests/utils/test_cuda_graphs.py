"""utils.cuda_graphs: what the sync scan flags, and the cache's behaviour off CUDA.

The capture and replay themselves need a GPU: ``tests/models/test_cuda.py`` checks them there.
"""

import contextlib

import pytest
import torch

from utils.cuda_graphs import GraphCache, SyncScan, host_syncs


def _clean(x, y):
    z = torch.fft.rfft2(x * 2 + y)
    return torch.fft.irfft2(z.abs() * z, s=x.shape[-2:]).relu_()


@pytest.mark.parametrize("fn, expected", [
    (lambda x: x.sum().item(), "aten::_local_scalar_dense"),
    (lambda x: bool((x > 0.5).any()), "aten::is_nonzero|aten::_local_scalar_dense"),
    (lambda x: torch.nonzero(x > 0.5), "aten::nonzero"),
    (lambda x: x[x > 0.5], "aten::index (boolean mask)"),
    (lambda x: torch.masked_select(x, x > 0.5), "aten::masked_select"),
    (lambda x: torch.unique(x), "aten::_unique2"),
    (lambda x: x.to("meta"), "aten::_to_copy (cpu, meta)"),
])
def test_scan_flags_what_a_graph_cannot_replay(fn, expected):
    x = torch.rand(4, 5)
    _, found = host_syncs(fn, x)
    assert set(expected.split("|")) & set(found), found


def test_scan_passes_a_pure_tensor_program():
    x, y = torch.rand(2, 1, 3, 8, 10)
    out, found = host_syncs(_clean, x, y)
    assert found == []
    assert torch.equal(out, _clean(x, y))


def test_scan_passes_integer_indexing_and_cpu_scalars():
    x = torch.rand(6, 4)
    index = torch.tensor([0, 2, 5])
    _, found = host_syncs(lambda t: t[index] * 3.0 + t[1:3].sum(), x)
    assert found == []


class _NumberIntoElement(torch.autograd.Function):
    """A backward pass that writes a Python number into one element of a device tensor."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        scale = torch.ones_like(grad)
        scale[0] = 0.5  # on CUDA: a copy from the host; on meta: a scalar_tensor copied in
        return grad * scale


@pytest.mark.parametrize("write, expected", [
    (lambda t: t.__setitem__(0, 1.0), "aten::copy_"),
    (lambda t: t.__setitem__(slice(1, 3), 2.0), "aten::copy_"),
    (lambda t: t.__setitem__(torch.tensor([1], device="meta"), 3.0), "aten::index_put_"),
    (lambda t: _NumberIntoElement.apply(t.requires_grad_()).sum().backward(), "aten::copy_"),
])
def test_scan_flags_a_python_number_assigned_into_a_device_tensor(write, expected):
    """What the meta device shows of ``x[i] = number``; seen in a backward pass too (a torch
    function mode is not active there)."""
    with SyncScan() as scan:
        write(torch.zeros(4, device="meta"))
    assert f"{expected} (a Python number assigned into a meta tensor)" in scan.found, scan.found


@pytest.mark.parametrize("index", [[0, 2], (slice(None), [1, 0])])
def test_scan_flags_a_python_list_as_a_device_index(index):
    with SyncScan() as scan:
        torch.zeros(4, 3, device="meta")[index]
    assert any("a Python list as index" in f for f in scan.found), scan.found


def test_scan_passes_numbers_a_kernel_takes_as_arguments():
    with SyncScan() as scan:
        t = torch.zeros(4, device="meta")
        torch.where(t > 0, t, 0.0).masked_fill(t > 1, -1.0).clamp(min=0.5).narrow(0, 1, 2).fill_(3.0)
    assert scan.found == []


def test_scan_is_a_mode_usable_directly():
    with SyncScan() as scan:
        torch.rand(3).max().item()
    assert scan.found == ["aten::_local_scalar_dense"]


def test_cache_calls_the_function_as_it_is_off_cuda():
    calls = []

    def fn(x, y):
        calls.append(1)
        return _clean(x, y)

    cache = GraphCache(fn)
    x, y = torch.rand(2, 1, 3, 8, 10)
    with torch.inference_mode():
        for _ in range(3):
            assert torch.equal(cache(x, y), _clean(x, y))
    assert len(calls) == 3 and cache.replays == 0 and not cache.graphs and not cache.eager_reasons


def test_cache_calls_the_function_as_it_is_with_autograd():
    x = torch.rand(3, requires_grad=True)
    cache = GraphCache(lambda t: t * 2)
    cache(x).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), 2.0))


# -- the cache's bookkeeping, with a stand-in for the CUDA calls ---------------------------------
class _FakeGraph:
    """Stands in for a CUDA graph: a replay runs the function again into the captured outputs."""

    def __init__(self, fn, static, outputs):
        self.fn, self.static, self.outputs = fn, static, outputs

    def replay(self):
        new = self.fn(*self.static)
        for out, value in zip(self.outputs, new if isinstance(new, tuple) else (new,)):
            out.copy_(value)


class CpuGraphCache(GraphCache):
    """GraphCache on the CPU: everything but the capture itself (streams, CUDAGraph) is the real code."""

    recorded = 0

    @staticmethod
    def _eligible(tensor):
        return True

    @staticmethod
    def _warm_up_stream(device):
        return contextlib.nullcontext()

    @staticmethod
    def _synchronize(device):
        pass

    def _record(self, static):
        self.recorded += 1
        out = self.fn(*static)
        outputs = list(out) if isinstance(out, tuple) else [out]
        return _FakeGraph(self.fn, static, outputs), outputs


def _inference(cache, *args):
    with torch.inference_mode():
        return cache(*args)


def test_one_capture_per_signature_and_outputs_that_are_copies():
    cache = CpuGraphCache(_clean)
    x, y = torch.rand(2, 1, 3, 8, 10)
    first = _inference(cache, x, y)
    second = _inference(cache, y, x)  # same signature, other values
    assert cache.recorded == 1 and cache.replays == 2
    assert torch.equal(first, _clean(x, y)) and torch.equal(second, _clean(y, x))  # the first was not overwritten
    third = _inference(cache, torch.rand(2, 3, 8, 10), torch.rand(2, 3, 8, 10))  # a new shape
    assert cache.recorded == 2 and len(cache.graphs) == 2 and third.shape == (2, 3, 8, 10)


def test_least_recently_used_signature_is_dropped():
    cache = CpuGraphCache(lambda t: t * 2, max_graphs=2)
    for n in (3, 4, 3, 5):
        _inference(cache, torch.rand(n))
    assert [k[0][0] for k in cache.graphs] == [(3,), (5,)]


def test_a_parameter_change_drops_every_graph():
    layer = torch.nn.Linear(4, 3)
    cache = CpuGraphCache(layer, watch=layer)
    x = torch.rand(2, 4)
    _inference(cache, x)
    with torch.no_grad():
        layer.weight.mul_(-1)
    with torch.inference_mode():
        assert torch.allclose(cache(x), layer(x))
    assert cache.recorded == 2
    layer.load_state_dict({"weight": torch.ones(3, 4), "bias": torch.zeros(3)})
    assert torch.allclose(_inference(cache, x), x.sum(1, keepdim=True).expand(2, 3))
    assert cache.recorded == 3


def test_a_syncing_function_is_scanned_once_and_runs_eagerly():
    calls = []

    def fn(t):
        calls.append(1)
        return t * float(t.sum())

    cache = CpuGraphCache(fn)
    t = torch.rand(5)
    for _ in range(3):
        assert torch.allclose(_inference(cache, t), t * t.sum())
    assert cache.recorded == 0 and next(iter(cache.eager_reasons.values())).startswith("host synchronisation: aten::")
    assert len(calls) == 2 + 2  # two warm-up calls, then one eager call each


def test_a_cache_filled_in_the_first_warm_up_call_is_not_a_sync():
    store = {}

    def fn(t):
        if "scale" not in store:
            store["scale"] = float(t.max())  # once, like a lazily built grid or weight
        return t * store["scale"]

    cache = CpuGraphCache(fn)
    t = torch.rand(5)
    _inference(cache, t)
    assert cache.recorded == 1 and not cache.eager_reasons


def test_a_replay_that_differs_or_a_failed_capture_falls_back_to_eager():
    counter = [0]

    def drifting(t):  # a Python value a real graph would freeze
        counter[0] += 1
        return t + counter[0]

    cache = CpuGraphCache(drifting)
    with pytest.warns(UserWarning, match="differed"):
        _inference(cache, torch.zeros(3))
    assert cache.eager_reasons and not cache.graphs

    class Failing(CpuGraphCache):
        def _record(self, static):
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    failing = Failing(lambda t: t + 1)
    with pytest.warns(UserWarning, match="capture failed"):
        assert torch.equal(_inference(failing, torch.zeros(3)), torch.ones(3))
    assert next(iter(failing.eager_reasons.values())) == "capture failed: operation not permitted when stream is capturing"


def test_tuple_outputs_and_what_the_graph_keeps_alive():
    layer = torch.nn.Linear(4, 3)
    cache = CpuGraphCache(lambda t: (layer(t), t.sum(1)), watch=layer)
    x = torch.rand(2, 4)
    a, b = _inference(cache, x)
    assert torch.allclose(a, layer(x)) and torch.allclose(b, x.sum(1))
    kept = {t.untyped_storage().data_ptr() for t in next(iter(cache.graphs.values())).keep}
    assert {layer.weight.data_ptr(), layer.bias.data_ptr()} <= kept


class _EmptyGraph:
    """What a capture on another device's stream leaves: a replay that does nothing."""

    def replay(self):
        pass


def test_a_graph_that_recorded_nothing_is_caught_by_the_check_on_other_values():
    """Its outputs hold the capture's results, so a check on the capture's own inputs would pass."""

    class Empty(CpuGraphCache):
        def _record(self, static):
            out = self.fn(*static)  # ran eagerly beside the capture
            return _EmptyGraph(), [out]

    cache = Empty(_clean)
    x, y = torch.rand(2, 1, 3, 8, 10)
    with pytest.warns(UserWarning, match="differed"):
        assert torch.equal(_inference(cache, x, y), _clean(x, y))
    assert not cache.graphs and cache.replays == 0
    assert torch.equal(_inference(cache, y, x), _clean(y, x))  # eager from then on, new values followed


def test_an_empty_graph_warning_becomes_an_error_and_others_pass_through():
    import warnings

    from utils.cuda_graphs import refuse_empty_graphs

    with pytest.raises(RuntimeError, match="recorded nothing"):
        with refuse_empty_graphs():
            warnings.warn("The CUDA Graph is empty. This usually means that the graph was attempted to be "
                          "captured on wrong device or stream.")
    with pytest.warns(UserWarning, match="something else"):
        with refuse_empty_graphs():
            warnings.warn("something else")


@pytest.mark.parametrize("t", [torch.full((2, 5), 0.5), torch.rand(1, 3, 4, 6), torch.arange(6).view(2, 3)])
def test_probe_values_differ_from_the_capture_inputs(t):
    from utils.cuda_graphs import probe_values

    p = probe_values(t)
    assert p.shape == t.shape and p.dtype == t.dtype and not torch.equal(p, t)
