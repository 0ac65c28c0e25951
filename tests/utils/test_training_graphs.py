"""utils.training_graphs on the CPU: everything but the capture itself is the real code.

The capture (``torch.cuda.make_graphed_callables``) needs a GPU: ``tests/models/test_cuda.py``
checks it there. Here a stand-in returns the step module itself, so a "replay" is the eager call,
and what is tested is the bookkeeping around it: which calls are graphed, that the capture's
extra passes leave no trace in the training run, the scan and the check's fallbacks.
"""

import copy

import pytest
import torch

from losses.registration import RegistrationLoss
from models import build_model, warp
from utils.training_graphs import TrainingGraphs, first_differing_gradient


class CpuTrainingGraphs(TrainingGraphs):
    captured = 0

    @staticmethod
    def _eligible(tensor):
        return True

    def _make_graphed(self, step, static):
        self.captured += 1
        return step

    @staticmethod
    def _synchronize(device):
        pass


class _Scaled(CpuTrainingGraphs):
    """A stand-in whose "graph" computes something else: the check must catch it."""

    def _make_graphed(self, step, static):
        return lambda moving, fixed: 1.01 * step(moving, fixed)


class _Failing(CpuTrainingGraphs):
    def _make_graphed(self, step, static):
        raise RuntimeError("operation not permitted when stream is capturing")


class _Refused(CpuTrainingGraphs):
    def _make_graphed(self, step, static):
        raise AssertionError("Modules must not have hooks registered at the time they are passed.")


MODELS = [
    ("fnoreg", {"preset": "small", "n_layers": 2, "diffeomorphic": True}, 2, (24, 28)),
    ("voxelmorph", {"preset": "vxm2"}, 2, (32, 32)),
    ("transmorph", {"preset": "3stage", "embed_dim": 12, "depths": [1, 1, 1], "num_heads": [2, 2, 2],
                    "drop_path_rate": 0.2}, 2, (64, 64)),
]


def _pair(shape, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(2, batch, 1, *shape, generator=g)


def _train(net, model, shape, steps=3):
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = RegistrationLoss(similarity="mse", reg_param=0.01)
    model.train()
    for step in range(steps):
        moving, fixed = _pair(shape, seed=step)
        flow = net(moving, fixed)
        total, _ = loss_fn(fixed, warp(moving, flow), flow)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("name, config, dim, shape", MODELS, ids=[m[0] for m in MODELS])
def test_a_graphed_run_trains_exactly_as_the_eager_run(name, config, dim, shape):
    """The capture's own passes (scan, check) change no parameter, buffer or random draw of the run."""
    torch.manual_seed(0)
    eager = build_model(name, config, dim)
    graphed = copy.deepcopy(eager)
    torch.manual_seed(1)
    _train(eager, eager, shape)
    after_eager = torch.get_rng_state()
    torch.manual_seed(1)
    net = CpuTrainingGraphs(graphed)
    _train(net, graphed, shape)
    assert net.captured == 1 and net.replays == 3 and not net.eager_reasons
    for (n, a), b in zip(eager.state_dict().items(), graphed.state_dict().values()):
        assert torch.equal(a, b), n
    assert torch.equal(torch.get_rng_state(), after_eager)  # the capture's passes drew nothing of the run's


def test_only_training_calls_with_autograd_are_graphed_and_each_shape_is_captured_once():
    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    net = CpuTrainingGraphs(model, max_graphs=2)
    model.train()
    for shape in [(32, 32), (32, 32), (32, 48), (48, 32), (32, 32)]:
        net(*_pair(shape))
    assert net.captured == 4 and net.replays == 5 and len(net.graphs) == 2  # (32, 32) was dropped, then again
    with torch.no_grad():
        net(*_pair((32, 32)))
    model.eval()
    net(*_pair((64, 64)))
    assert net.captured == 4 and net.replays == 5
    assert net.training is False and net.parameters  # the model's attributes, read through the stand-in


@pytest.mark.parametrize("spec, module, function", [
    (("transmorph", {"preset": "3stage", "embed_dim": 12, "depths": [2, 1, 1], "num_heads": [2, 2, 2]}, 2, (64, 64)),
     "transmorph", "_shift_mask"),  # read by the forward graph (a second block per stage is shifted)
    (MODELS[0], "fft", "_halved_bins"),  # read by the backward graph
])
def test_a_graph_keeps_alive_the_cached_constants_it_reads(monkeypatch, spec, module, function):
    """A replay reads the memory of what models keep in LRU caches: the captured entry must hold
    those tensors, or a cache that drops one frees memory the graph still reads."""
    import importlib

    owner = importlib.import_module(f"models.{module}")
    cached, returned = getattr(owner, function), []

    def recording(*args):
        out = cached(*args)
        returned.append(out)
        return out

    monkeypatch.setattr(owner, function, recording)
    name, config, dim, shape = spec
    torch.manual_seed(0)
    model = build_model(name, config, dim)
    model.train()
    net = CpuTrainingGraphs(model)
    net(*_pair(shape))
    (entry,) = net.graphs.values()
    kept = {id(t) for t in entry.keep}
    assert returned and all(id(t) in kept for t in returned)
    assert all(id(p) in kept for p in model.parameters() if p.requires_grad)


def test_moving_the_parameters_drops_every_graph():
    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    net = CpuTrainingGraphs(model)
    net(*_pair((32, 32)))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)  # in place, as an optimizer: the graph stays
    net(*_pair((32, 32)))
    assert net.captured == 1
    model.to(torch.float64).to(torch.float32)  # new storages
    net(*_pair((32, 32)))
    assert net.captured == 2


def test_a_step_that_reads_a_value_on_the_host_trains_eagerly():
    class Syncing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, moving, fixed):
            out = self.conv(torch.cat([moving, fixed], 1))
            return out * float(out.detach().abs().max())

    net = CpuTrainingGraphs(Syncing())
    out = net(*_pair((8, 8)))
    assert net.captured == 0 and net.replays == 0 and out.requires_grad
    (reason,) = net.eager_reasons.values()
    assert reason.startswith("host synchronisation") and "_local_scalar_dense" in reason


@pytest.mark.parametrize("cls, expected", [
    (_Scaled, "forward pass differed"),
    (_Failing, "capture failed: operation not permitted"),
    (_Refused, "capture failed: Modules must not have hooks"),
])
def test_a_replay_that_differs_or_a_failed_capture_trains_eagerly(cls, expected):
    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.01)  # zero-initialised: every flow would be zero
    before = copy.deepcopy(model.state_dict())
    net = cls(model)
    moving, fixed = _pair((32, 32))
    with pytest.warns(UserWarning, match="training eagerly"):
        out = net(moving, fixed)
    torch.testing.assert_close(out, model(moving, fixed))  # the eager call's result
    (reason,) = net.eager_reasons.values()
    assert expected in reason and net.replays == 0
    for (n, a), b in zip(before.items(), model.state_dict().values()):
        assert torch.equal(a, b) or n.endswith(("running_mean", "running_var", "num_batches_tracked")), n


def test_a_gradient_that_differs_is_named():
    class HalfGradient(CpuTrainingGraphs):
        def _make_graphed(self, step, static):
            def run(moving, fixed):
                out = step(moving, fixed)
                return out + 0.0 * out.detach() - 0.5 * (out - out.detach())  # same values, half the gradient
            return run

    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    net = HalfGradient(model)
    with pytest.warns(UserWarning, match="replayed gradient of"):
        net(*_pair((32, 32)))
    (reason,) = net.eager_reasons.values()
    assert "in norm" in reason and "the model's largest" in reason


def test_gradients_agree_within_algorithm_noise_and_differ_beyond_it():
    """5 % in norm against max(own norm, 1 % of the largest): what cuDNN's other algorithms
    (TF32, 1e-3) and a zero gradient's rounding noise (measured in a GPU run: 0.05 where the
    model's largest gradient entry was 3.5e3) stay within; an O(1) error does not."""
    torch.manual_seed(0)
    big, small = torch.randn(64) * 1e3, torch.randn(8) * 1e-2
    noise = torch.randn(8) * 0.05
    expected = [big, small, None]
    assert first_differing_gradient([big * (1 + 1e-3), small + noise, None], expected) is None
    assert first_differing_gradient([big * 1.1, small, None], expected)[0] == 0
    assert first_differing_gradient([big, small + 100.0, None], expected)[0] == 1
    assert first_differing_gradient([big, small, torch.zeros(1)], expected)[0] == 2
    nan = big.clone()
    nan[0] = float("nan")
    assert first_differing_gradient([nan, small, None], expected)[0] == 0


def test_a_graph_that_ignores_new_inputs_is_caught():
    """A stale graph (one that recorded nothing replays the capture's results) fails the check,
    which runs on other values than the capture's."""

    class Stale(CpuTrainingGraphs):
        def _make_graphed(self, step, static):
            frozen = [t.clone() for t in static]
            return lambda moving, fixed: step(*frozen)

    model = build_model("voxelmorph", {"preset": "vxm2"}, 2)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.01)
    net = Stale(model)
    with pytest.warns(UserWarning, match="differed"):
        net(*_pair((32, 32)))
    assert net.replays == 0 and net.eager_reasons
