"""No host round trip in a training step or an inference call, checked without a GPU.

On CUDA, a tensor made from host values inside a step (``torch.tensor(values, device=...)``, a
factor tensor built on the host and moved) is a copy from pageable memory that waits for the
stream: the host stops running ahead of the GPU, and a CUDA graph cannot capture the call. Run on
PyTorch's ``meta`` device, which has shapes but no data, every such copy still shows
(:class:`utils.cuda_graphs.SyncScan`), so the check runs in CI.

Each case is called once before the scanned call, as :class:`utils.cuda_graphs.GraphCache` warms
up: kept values (sampling grids, unit scales, label lists) are made once per shape, by design.
The optimiser is not scanned: Adam keeps its step count on the host unless ``capturable``.
"""

import pytest
import torch

from losses.dice import one_hot
from losses.registration import RegistrationLoss
from models import build_model, warp
from models.graphed import inference_session
from utils.cuda_graphs import SyncScan

META = torch.device("meta")

# (model_name, model_config, dim, shape): every model family, 2D and 3D, even and odd sizes.
CASES = [
    ("fnoreg", {"preset": "small"}, 2, (32, 40)),
    ("fnoreg", {"preset": "small", "diffeomorphic": True, "fold_repair": True}, 2, (33, 41)),
    ("fnoreg", {"preset": "small", "diffeomorphic": True, "band_limit": True}, 2, (32, 40)),
    ("fnoreg", {"preset": "3d", "diffeomorphic": True, "fold_repair": True}, 3, (16, 18, 21)),
    ("fnoreg", {"preset": "3d", "checkpointing": True}, 3, (16, 18, 20)),
    ("fno", {"preset": "small"}, 2, (32, 40)),
    ("voxelmorph", {"preset": "vxm2"}, 2, (32, 48)),
    ("voxelmorph", {"preset": "large"}, 3, (32, 32, 32)),
    ("fouriernet", {"preset": "c16"}, 2, (32, 48)),
    ("fouriernet", {"preset": "c16", "diffeomorphic": True}, 3, (32, 32, 48)),
    ("transmorph", {"preset": "3stage"}, 2, (64, 64)),
]
LABELS = (1, 2, 3)


def _id(case):
    name, config, dim, _ = case
    extra = ",".join(k for k in config if k != "preset")
    return f"{name}-{config['preset']}-{dim}d" + (f"-{extra}" if extra else "")


def _meta_model(name, config, dim, training):
    model = build_model(name, config, dim).to(META)
    return model.train(training)


def _inputs(shape):
    moving, fixed = torch.empty(2, 2, 1, *shape, device=META)
    labels = torch.empty(2, 2, 1, *shape, dtype=torch.long, device=META)
    return moving, fixed, labels


def _scanned_twice(step):
    step()  # fills what is kept per shape
    with SyncScan() as scan:
        step()
    return scan.found


@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("loss", [
    dict(similarity="mse", reg_param=0.01),
    dict(similarity="ncc", reg_param=0.01, seg_param=0.5, jac_param=0.1),
], ids=["mse", "ncc-dice-jacobian"])
def test_training_step_has_no_host_round_trip(case, loss):
    name, config, dim, shape = case
    model = _meta_model(name, config, dim, training=True)
    loss_fn = RegistrationLoss(**loss)
    moving, fixed, labels = _inputs(shape)

    def step():
        flow = model(moving, fixed)
        onehots = ()
        if loss_fn.uses_labels:
            onehots = (one_hot(labels[1], LABELS), warp(one_hot(labels[0], LABELS), flow))
        total, _ = loss_fn(fixed, warp(moving, flow), flow, *onehots)
        total.backward()

    assert _scanned_twice(step) == []


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_inference_core_has_no_host_round_trip(case):
    """What ``--cuda_graphs`` captures: FNOReg's core of ``graph_parts``, any other model whole."""
    name, config, dim, shape = case
    model = _meta_model(name, config, dim, training=False)
    moving, fixed, _ = _inputs(shape)
    parts = getattr(model, "graph_parts", None)
    core = parts()[0] if parts is not None else model

    def call():
        out = core(moving, fixed)
        if torch.is_tensor(out):
            warp(moving, out)

    with inference_session(model), torch.inference_mode():
        assert _scanned_twice(call) == []


def test_the_scan_sees_a_tensor_made_from_host_values_on_a_device():
    x = torch.empty(3, device=META)
    with SyncScan() as scan:
        x * torch.tensor([1.0, 2.0, 3.0], device=x.device)
        x * torch.as_tensor([1.0, 2.0, 3.0], device=META)
        x * torch.as_tensor(x, device=META)  # already there: no copy
    assert scan.found == ["torch.tensor (host data copied to meta)", "torch.as_tensor (host data copied to meta)"]
