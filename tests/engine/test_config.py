"""Config loading and validation: defaults, shipped configs, and every error names its key."""

import json

import pytest

from engine.config import CONFIG_DIR, find_config_file, load_config, resolve_config
from engine.train_config import TRAIN_SCHEMA
from utils.errors import ConfigError

MINIMAL = {"model_name": "fnoreg", "model_config": {"preset": "small"}}


def test_defaults_filled_and_idempotent():
    cfg = resolve_config(MINIMAL, 2)
    assert set(cfg["train_config"]) == set(TRAIN_SCHEMA)
    assert cfg["train_config"]["lr"] == 1e-4 and cfg["train_config"]["reg_param"] == 0.01
    assert cfg["data_config"]["dataset"] == "phantom"
    assert resolve_config(cfg, 2) == cfg


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    raw = json.loads(path.read_text())
    dim = raw.get("dim", 3 if "3d" in path.name else 2)
    cfg, _ = load_config(str(path), dim)
    assert cfg["dim"] == dim


@pytest.mark.parametrize(
    "change, message",
    [
        ({"modle_name": "x"}, "unknown key 'modle_name'"),
        ({"train_config": {"lr": "fast"}}, "train_config.lr must be"),
        ({"train_config": {"batch_size": 0}}, "train_config.batch_size must be at least 1"),
        ({"train_config": {"epochs": True}}, "train_config.epochs must be an integer"),
        ({"train_config": {"bacth_size": 4}}, "unknown key train_config.bacth_size"),
        ({"train_config": {"similarity": "l2"}}, "train_config.similarity"),
        ({"train_config": {"lr_schedule": {"type": "warm"}}}, "lr_schedule.type"),
        ({"train_config": {"lr_schedule": {"type": "step"}}}, "lr_schedule.step_size is required"),
        # Values that would make training climb the loss or crash after an epoch.
        ({"train_config": {"grad_clip": -1}}, "grad_clip must be positive or null"),
        ({"train_config": {"ncc_window": 8}}, "ncc_window must be odd"),
        ({"train_config": {"lr_schedule": {"type": "step", "step_size": 1, "gamma": -1}}}, "gamma must be positive"),
        ({"train_config": {"lr_schedule": {"type": "step", "step_size": 0}}}, "step_size must be at least 1"),
        ({"train_config": {"lr_schedule": {"type": "exponential", "gamma": 0}}}, "gamma must be positive"),
        ({"train_config": {"lr_schedule": {"type": "cosine", "min_lr": -1e-5}}}, r"min_lr must lie in \[0, lr"),
        ({"model_config": {"preset": "3d"}}, "is 3D"),
        ({"model_name": "unet"}, "unknown model_name"),
        ({"dim": 3}, "use train_3d.py"),
        ({"data_config": {"datset": "x"}}, "data_config"),
    ],
)
def test_errors_name_the_key(change, message):
    raw = {**MINIMAL, **change}
    with pytest.raises(ConfigError, match=message):
        resolve_config(raw, 2)


def test_config_file_lookup(tmp_path):
    assert find_config_file("fnoreg_2d_small.json") == CONFIG_DIR / "fnoreg_2d_small.json"
    assert find_config_file("fnoreg_2d_small") == CONFIG_DIR / "fnoreg_2d_small.json"
    with pytest.raises(ConfigError, match="not found.*available in configs/"):
        find_config_file("nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model_name": "fnoreg",\n "x": }')
    with pytest.raises(ConfigError, match="not valid JSON.*line 2"):
        load_config(str(bad), 2)
