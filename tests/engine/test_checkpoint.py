"""Checkpoints: listing, weights that rebuild their model, clear errors."""

import pytest
import torch

from engine.checkpoint import list_checkpoint_epochs, load_checkpoint, load_model, save_checkpoint, save_weights
from models import build_model
from utils.errors import UserError


def test_weights_rebuild_the_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("fnoreg", {"preset": "small", "n_layers": 1, "n_modes": [8, 8], "head_init": "default"}, 2)
    save_weights(tmp_path, model, 3, (32, 40))
    loaded, info = load_model(tmp_path)
    assert info["checkpoint"] == "final" and info["epoch"] == 3 and info["train_size"] == [32, 40]
    assert info["model_config"]["n_layers"] == 1  # the config stored with the weights, which built the model
    x = torch.rand(1, 1, 32, 40)
    model.eval()
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x, x), model(x, x))


def test_checkpoint_listing_and_missing_epoch(tmp_path):
    model = build_model("fnoreg", {"preset": "small", "n_layers": 1, "n_modes": [8, 8]}, 2)
    for epoch in (10, 2):
        save_checkpoint(tmp_path, epoch, {"model": model.state_dict(), "model_name": "fnoreg",
                                          "model_config": model.model_config, "epoch": epoch})
    assert list_checkpoint_epochs(tmp_path) == [2, 10]
    assert load_checkpoint(tmp_path, 10)["epoch"] == 10
    with pytest.raises(UserError, match=r"no checkpoint for epoch 5 .*existing checkpoint epochs: 2, 10"):
        load_checkpoint(tmp_path, 5)
    loaded, info = load_model(tmp_path, ckpt_epoch=2)
    assert info["checkpoint"] == "epoch2" and info["partial_epoch_steps"] == 0
    with pytest.raises(UserError, match="weights.pth does not exist.*--ckpt_epoch"):
        load_model(tmp_path)


def test_a_checkpoint_written_on_an_interruption_says_so(tmp_path, capsys):
    model = build_model("fnoreg", {"preset": "small", "n_layers": 1, "n_modes": [8, 8]}, 2)
    save_checkpoint(tmp_path, 3, {"model": model.state_dict(), "model_name": "fnoreg",
                                  "model_config": model.model_config, "epoch": 2, "step": 22})
    _, info = load_model(tmp_path, ckpt_epoch=3)
    assert (info["epoch"], info["partial_epoch_steps"]) == (2, 22)
    assert "the state after epoch 2 plus 22 steps of epoch 3" in capsys.readouterr().err


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt_epoch1.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(tmp_path, 1)
