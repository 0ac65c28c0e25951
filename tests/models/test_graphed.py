"""models.graphed and FNOReg's split for CUDA graphs, checked on the CPU.

What a graph needs and the CPU can check: the captured part issues no host synchronisation
(``utils.cuda_graphs.SyncScan``), and the split call is the model's own call. The capture itself
is tested on a GPU (``tests/models/test_cuda.py``).
"""

import pytest
import torch

from models import build_model
from models.graphed import GraphedModel, inference_session
from models.spectral import SpectralConv
from utils.cuda_graphs import host_syncs

FNOREG_CONFIGS = [
    {"preset": "small"},
    {"preset": "small", "diffeomorphic": True, "fold_repair": True},
    {"preset": "small", "diffeomorphic": True, "band_limit": True},
    {"preset": "small", "band_limit": True, "fold_repair": True},
]
# Even, odd, and below the small preset's kept modes (40 x 25 of a 2D grid).
SHAPES = [(48, 64), (45, 53), (21, 17)]


def _fnoreg(config, head=0.05):
    torch.manual_seed(0)
    model = build_model("fnoreg", config, 2)
    with torch.no_grad():  # a head that predicts something, and a training shape for the band limit
        for p in model.projection[-1].parameters():
            p.normal_(0, head)
        model.trained_shape.copy_(torch.tensor([24, 32]))
    return model.eval()


def _pair(shape, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 1, 1, *shape, generator=gen)


@pytest.mark.parametrize("config", FNOREG_CONFIGS, ids=lambda c: "+".join(k for k, v in c.items() if v is True) or "published")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fnoreg_split_is_its_forward_and_its_core_never_syncs(config, shape):
    model = _fnoreg(config)
    moving, fixed = _pair(shape)
    core, finish = model.graph_parts()
    with torch.inference_mode():
        expected = model(moving, fixed)
        assert torch.equal(model.field(model.network(moving, fixed)), expected)
        out, found = host_syncs(core, moving, fixed)
        assert found == []
        if finish is not None:
            out = finish(*out) if isinstance(out, tuple) else finish(out)
        assert torch.equal(out, expected)
    # With neither the band limit nor the fold repair the whole call is the core.
    assert (finish is None) == (not config.get("band_limit") and not config.get("fold_repair"))


@pytest.mark.parametrize("head", [0.05, 3.0], ids=["clean", "folding"])
def test_fold_repair_split_repairs_only_when_the_captured_check_says_so(head):
    from models.foldrepair import repair_folds

    model = _fnoreg({"preset": "small", "diffeomorphic": True, "fold_repair": True}, head)
    moving, fixed = _pair((48, 64))
    core, finish = model.graph_parts()
    with torch.inference_mode():
        raw, flow, folds = core(moving, fixed)
        passes = repair_folds(raw, model.integrate)[1]
        assert bool(folds) == (passes > 0) and bool(folds) == (head > 1)
        assert torch.equal(finish(raw, flow, folds), model(moving, fixed))


def test_fold_repair_is_what_keeps_the_whole_call_out_of_a_graph():
    model = _fnoreg({"preset": "small", "diffeomorphic": True, "fold_repair": True})
    with torch.inference_mode():
        _, found = host_syncs(model, *_pair((48, 64)))
    assert found  # bool(folded.any()): why graph_parts ends the core at the network


@pytest.mark.parametrize("name, config, shape", [
    ("voxelmorph", {"preset": "vxm2"}, (64, 64)),
    ("fouriernet", {"preset": "c16", "diffeomorphic": True}, (64, 64)),
    ("transmorph", {"preset": "3stage"}, (64, 64)),
    ("fno", {"preset": "small"}, (45, 53)),
])
def test_baselines_are_captured_whole(name, config, shape):
    model = build_model(name, config, 2).eval()
    with torch.inference_mode():
        _, found = host_syncs(model, *_pair(shape))
    assert found == []


def test_session_on_the_cpu_runs_the_model_and_frees_its_caches():
    model = _fnoreg({"preset": "small", "diffeomorphic": True, "fold_repair": True})
    moving, fixed = _pair((45, 53))
    with torch.inference_mode():
        expected = model(moving, fixed)
        with inference_session(model, cuda_graphs=True) as run:
            assert isinstance(run, GraphedModel)
            assert torch.equal(run(moving, fixed), expected)
            assert run.replays == 0  # no CUDA here: the eager call
        with inference_session(model) as run:
            assert run is model
    assert all(m._cache is None for m in model.modules() if isinstance(m, SpectralConv))


def test_graphed_model_in_training_mode_is_the_model():
    model = _fnoreg({"preset": "small"}).train()
    moving, fixed = _pair((24, 32))
    torch.manual_seed(0)
    expected = model(moving, fixed)
    torch.manual_seed(0)
    out = GraphedModel(model)(moving, fixed)
    assert out.requires_grad and torch.equal(out, expected)


def test_scan_lists_what_a_graph_of_the_call_must_keep_alive():
    from models.batchnorm import FOLD_CACHE
    from models.spectral import weight_cache
    from utils.cuda_graphs import SyncScan

    model = _fnoreg({"preset": "small", "diffeomorphic": True})
    moving, fixed = _pair((40, 48))
    with torch.inference_mode(), weight_cache(model):
        model(moving, fixed)  # fills the weight and fold caches and the warp's grid
        with SyncScan() as scan:
            model(moving, fixed)
        spectral = [m._cache[1] for m in model.modules() if isinstance(m, SpectralConv)]
        folded = [t for m in model.modules() for t in getattr(m, FOLD_CACHE, {}).get("folded", ())]
    storage = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    long_lived = {storage(t) for t in [*model.parameters(), *model.buffers(), moving, fixed, *spectral, *folded]}
    external = {storage(t) for t in scan.external}
    assert {storage(t) for t in spectral + folded} <= external  # the caches a replay reads
    extra = [t for t in scan.external if storage(t) not in long_lived]
    # Beyond those, only the integration's cached identity grid: no intermediate of the call.
    assert len(extra) == 1 and tuple(extra[0].shape) == (1, 40, 48, 2)


@pytest.mark.parametrize("head", [0.05, 3.0], ids=["clean", "folding"])
@pytest.mark.parametrize("config", FNOREG_CONFIGS[:3], ids=["published", "diffeomorphic+fold_repair", "band_limit"])
def test_graphed_model_with_a_stand_in_graph_gives_the_model_s_field(config, head):
    from tests.utils.test_cuda_graphs import CpuGraphCache

    model = _fnoreg(config, head)
    with torch.inference_mode(), inference_session(model, cuda_graphs=True) as run:
        run.graphs = CpuGraphCache(run.graphs.fn, watch=model)  # the real bookkeeping, a stand-in capture
        for seed in (1, 2):
            moving, fixed = _pair((45, 53), seed)
            assert torch.equal(run(moving, fixed), model(moving, fixed))
        assert run.replays == 2 and run.graphs.recorded == 1 and not run.eager_reasons
