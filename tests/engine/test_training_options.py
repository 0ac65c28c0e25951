"""Training options of issue 11: multi-resolution batches and the folding penalty, end to end."""

import json

import pytest
import torch

from engine.train_loop import TrainingLoop
from tests.engine.test_training import train, weights, write_config


def test_multires_training_records_its_largest_shape_and_resumes_exactly(tmp_path, exp_root, monkeypatch):
    shapes = []
    original = TrainingLoop._loss

    def spy(self, net, batch, loss_fn=None):
        if net.training:
            shapes.append(tuple(batch.moving.shape[2:]))
        return original(self, net, batch, loss_fn)

    monkeypatch.setattr(TrainingLoop, "_loss", spy)
    config = write_config(tmp_path, train_config={"multires": {"min_size": 12, "max_size": 32}},
                          model_config={"band_limit": True})
    assert train("--config_file", config) == 0
    folder = exp_root / "2d" / "exp1"
    assert len(set(shapes)) > 2 and all(12 <= s[0] <= 32 for s in shapes)
    state = weights(folder)
    assert state["trained_shape"].tolist() == [max(s[0] for s in shapes), max(s[1] for s in shapes)]
    # Resume from epoch 2: the same sizes are drawn, so the weights are bit-identical.
    shapes.clear()
    assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0
    resumed = weights(folder)
    for key in state:
        assert torch.equal(state[key], resumed[key]), key


def test_multires_refuses_size_flag(tmp_path, exp_root, capsys):
    config = write_config(tmp_path, train_config={"multires": {"min_size": 12, "max_size": 32}})
    with pytest.raises(SystemExit) as exc:
        train("--config_file", config, "--size", "16")
    assert exc.value.code == 2 and "multires" in capsys.readouterr().err


def test_jac_param_logs_the_folding_term(tmp_path, exp_root):
    config = write_config(tmp_path, train_config={"jac_param": 0.5, "epochs": 2})
    assert train("--config_file", config) == 0
    history = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())
    assert "train_folding_penalty" in history and all(v >= 0 for v in history["train_folding_penalty"])
    # The validation's folding is the % of folded pixels; its penalty term has its own key.
    assert len(history["val_folding_penalty"]) == len(history["val_folding"])


@pytest.mark.parametrize("value", [-1, "a"])
def test_bad_jac_param(tmp_path, exp_root, capsys, value):
    config = write_config(tmp_path, train_config={"jac_param": value})
    with pytest.raises(SystemExit) as exc:
        train("--config_file", config)
    assert exc.value.code == 2 and "jac_param" in capsys.readouterr().err


def test_mixed_precision_trains_the_network_under_autocast_and_the_loss_in_float32(tmp_path, exp_root, monkeypatch):
    seen = []
    original = TrainingLoop._objective

    def spy(self, loss_fn, batch, flow, warped):
        seen.append((torch.is_autocast_enabled("cpu"), flow.dtype, warped.dtype))
        return original(self, loss_fn, batch, flow, warped)

    monkeypatch.setattr(TrainingLoop, "_objective", spy)
    convs = []  # (autocast on, output dtype) of every convolution run while training
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: convs.append((torch.is_autocast_enabled("cpu"), out.dtype))
        if isinstance(module, torch.nn.modules.conv._ConvNd) and module.training else None)
    config = write_config(tmp_path, train_config={"mixed_precision": "bfloat16", "epochs": 2})
    try:
        assert train("--config_file", config) == 0
    finally:
        hook.remove()
    assert (True, torch.bfloat16) in convs  # the network's own layers ran in bfloat16
    folder = exp_root / "2d" / "exp1"
    history = json.loads((folder / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(history["train_loss"])))
    assert seen and all(entry == (False, torch.float32, torch.float32) for entry in seen)
    # Weights (and so the optimizer's state) stay float32.
    assert all(t.dtype == torch.float32 for t in weights(folder).values() if t.is_floating_point())
    stored = json.loads((folder / "config.json").read_text())
    assert stored["train_config"]["mixed_precision"] == "bfloat16"


@pytest.mark.parametrize("value", ["float16", True, "fp32"])
def test_bad_mixed_precision_is_a_one_line_error(tmp_path, exp_root, capsys, value):
    config = write_config(tmp_path, train_config={"mixed_precision": value})
    with pytest.raises(SystemExit) as exc:
        train("--config_file", config)
    assert exc.value.code == 2 and "train_config.mixed_precision" in capsys.readouterr().err
