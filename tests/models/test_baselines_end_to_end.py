"""Baselines through the entry scripts: train_2d.py then evaluate_2d.py at two sizes, as for FNOReg.

The scripts are run in-process with ``runpy`` (exactly their ``__main__`` path: flags, the error
boundary, exit status) on tiny phantoms, trained at half size and evaluated at half and full.
"""

import json
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

MODELS = {
    "voxelmorph": {"enc_features": [4, 8, 8, 8], "dec_features": [8, 8, 8, 8, 4, 4]},
    "fouriernet": {"start_channels": 2, "diffeomorphic": True},
}
TRAIN = {"lr": 1e-3, "batch_size": 2, "epochs": 1, "steps_per_epoch": 2, "ckpt_freq": 1, "image_log_freq": 1,
         "seed": 0}
DATA = {"dataset": "phantom", "phantom": {"n_subjects": 7, "shape": [32, 32], "seed": 0},
        "splits": {"train": [0, 2], "val": [3, 4], "test": [5, 6]}}


def run_script(name, *argv, capsys=None):
    """Run ``name`` as ``python name argv``; return (exit status, stderr)."""
    old = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_path(str(REPO / name), run_name="__main__")
        status = 0
    except SystemExit as exc:
        status = exc.code or 0
    finally:
        sys.argv = old
    return status, capsys.readouterr().err if capsys else ""


@pytest.fixture()
def exp_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    return tmp_path / "experiments"


def write_config(tmp_path, model_name):
    path = tmp_path / f"{model_name}.json"
    path.write_text(json.dumps({"description": f"tiny {model_name}", "dim": 2, "model_name": model_name,
                                "model_config": MODELS[model_name], "train_config": TRAIN, "data_config": DATA}))
    return str(path)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_train_half_then_evaluate_half_and_full(model_name, tmp_path, exp_root, capsys):
    config = write_config(tmp_path, model_name)
    status, err = run_script("train_2d.py", "--config_file", config, "--size", "16", "--gpu_num", "-1",
                             capsys=capsys)
    assert status == 0, err
    status, err = run_script("evaluate_2d.py", "--exp_num", "1", "--size", "16", "32", "--gpu_num", "-1",
                             "--n_panels", "1", capsys=capsys)
    assert status == 0, err
    for size in (16, 32):
        summary = json.loads((exp_root / "2d" / "exp1" / "eval" / f"final_{size}" / "summary.json").read_text())
        assert summary["model_name"] == model_name
        assert summary["eval_size"] == size and summary["train_size"] == [16, 16]
        assert 0 <= summary["dice_mean"] <= 1


def test_a_size_the_model_cannot_take_is_one_line_and_exit_2(tmp_path, exp_root, capsys):
    config = write_config(tmp_path, "voxelmorph")
    status, err = run_script("train_2d.py", "--config_file", config, "--size", "24", "--gpu_num", "-1",
                             capsys=capsys)
    assert status == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "voxelmorph cannot run at 24x24" in lines[0] and "multiple of 16" in lines[0]
    assert "Traceback" not in err
