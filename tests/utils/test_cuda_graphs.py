"""utils.cuda_graphs: what the sync scan flags, and the cache's behaviour off CUDA.

The capture and replay themselves need a GPU: ``tests/models/test_cuda.py`` checks them there.
"""

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
