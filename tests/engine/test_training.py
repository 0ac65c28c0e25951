"""Training end to end on tiny phantoms: folders, restart, resume, determinism, signals, errors, DDP."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import experiment as xp
from engine.checkpoint import list_checkpoint_epochs
from engine.training import train_main
from utils.cli import run_cli

REPO = Path(__file__).resolve().parents[2]

TINY = {
    "description": "tiny test run",
    "model_name": "fnoreg",
    "model_config": {"hidden_channels": 4, "projection_channels": 8, "n_layers": 1, "n_modes": [8, 8]},
    "train_config": {"lr": 1e-3, "batch_size": 2, "epochs": 4, "steps_per_epoch": 3, "ckpt_freq": 2,
                     "image_log_freq": 2, "seed": 3, "lr_schedule": {"type": "step", "step_size": 1, "gamma": 0.9}},
    "data_config": {"dataset": "phantom", "phantom": {"n_subjects": 8, "shape": [32, 40], "seed": 0},
                    "splits": {"train": [0, 4], "val": [5, 7], "test": None}},
}


@pytest.fixture()
def exp_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    return tmp_path / "experiments"


def write_config(tmp_path, **changes):
    cfg = json.loads(json.dumps(TINY))
    for section, values in changes.items():
        cfg[section].update(values)
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def train(*argv):
    return run_cli(lambda a: train_main(2, a), ["--gpu_num", "-1", *argv])


def weights(folder):
    return torch.load(folder / "weights.pth", weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fresh_run_leaves_the_experiment_folder(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    for name in ("config.json", "metadata.json", "history.json", "weights.pth", "plots/dice.png", "plots/loss.png"):
        assert (folder / name).is_file(), name
    assert list_checkpoint_epochs(folder) == [2, 4]
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["exp_num"] == 1 and meta["dim"] == 2 and meta["train_size"] == [32, 40]
    assert meta["model_name"] == "fnoreg" and meta["n_params"] > 0 and meta["description"] == "tiny test run"
    assert [r["status"] for r in meta["runs"]] == ["finished"]
    assert meta["versions"]["torch"] == torch.__version__
    history = json.loads((folder / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4] and len(history["val_dice"]) == 4
    assert 0 <= history["initial_val_dice"] <= 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "logs" / "run1"), size_guidance={"images": 0}).Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"Loss/train", "Loss/val", "Loss/train_similarity", "Loss/train_smoothness", "Dice/val", "Folding/val",
            "LR"} <= tags
    assert [e.step for e in acc.Scalars("Dice/val")] == [1, 2, 3, 4]
    assert "Registration/val_pair0" in acc.Tags()["images"]

    # A second start takes the next number and leaves the first untouched.
    assert train("--config_file", write_config(tmp_path)) == 0
    assert xp.list_experiments(2) == [1, 2]


def test_resume_halfway_gives_identical_weights(tmp_path, exp_root):
    cfg = write_config(tmp_path)
    assert train("--config_file", cfg) == 0
    straight = weights(exp_root / "2d" / "exp1")
    assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0
    assert_same_weights(weights(exp_root / "2d" / "exp1"), straight)
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert [(r["kind"], r["start_epoch"], r["status"]) for r in meta["runs"]] == [
        ("start", 0, "finished"), ("resume", 2, "finished")]
    history = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4]


def test_interrupt_saves_checkpoint_and_resume_continues_exactly(tmp_path, exp_root, monkeypatch):
    cfg = write_config(tmp_path)
    assert train("--config_file", cfg) == 0
    straight = weights(exp_root / "2d" / "exp1")

    from engine.batches import DeviceSplit

    original = DeviceSplit.batch
    calls = {"n": 0}

    def interrupting(self, idx):
        calls["n"] += len(self) == 20  # count training batches only (5 subjects: 20 ordered pairs)
        if calls["n"] == 5 and len(self) == 20:  # 2nd step of epoch 2 (3 steps per epoch): as if Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, idx)

    monkeypatch.setattr(DeviceSplit, "batch", interrupting)
    assert train("--config_file", cfg) == 130
    monkeypatch.setattr(DeviceSplit, "batch", original)
    folder = exp_root / "2d" / "exp2"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["runs"][-1]["status"] == "interrupted"
    assert list_checkpoint_epochs(folder) == [2]
    state = torch.load(folder / "checkpoints" / "ckpt_epoch2.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2
    assert not (folder / "weights.pth").exists()

    assert train("--exp_num", "2", "--ckpt_epoch", "2") == 0
    assert_same_weights(weights(folder), straight)


def test_restart_keeps_previous_run(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["train_config"]["epochs"] = 2  # the user edits the stored config, then restarts
    (folder / "config.json").write_text(json.dumps(cfg))
    assert train("--exp_num", "1") == 0
    assert (folder / "previous_runs" / "run1" / "weights.pth").is_file()
    assert list_checkpoint_epochs(folder / "previous_runs" / "run1") == [2, 4]
    assert list_checkpoint_epochs(folder) == [2]
    assert (folder / "logs" / "run1").is_dir() and (folder / "logs" / "run2").is_dir()
    meta = json.loads((folder / "metadata.json").read_text())
    assert [r["kind"] for r in meta["runs"]] == ["start", "restart"]


def test_size_flag_sets_training_shape(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 1}), "--size", "16") == 0
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert meta["train_size"] == [16, 20]


def test_nan_loss_stops_with_message(tmp_path, exp_root, monkeypatch, capsys):
    from losses import registration

    original = registration.RegistrationLoss.__call__

    def nan_loss(self, *args, **kwargs):
        total, terms = original(self, *args, **kwargs)
        return total * float("nan"), terms

    monkeypatch.setattr(registration.RegistrationLoss, "__call__", nan_loss)
    assert train("--config_file", write_config(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "non-finite training loss at epoch 1" in err
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert meta["runs"][-1]["status"] == "failed"
    assert not (exp_root / "2d" / "exp1" / "weights.pth").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--config_file", "missing.json"], "config file 'missing.json' not found"),
        (["--exp_num", "9"], "experiment 9 not found"),
        (["--ckpt_epoch", "2"], "--ckpt_epoch needs --exp_num"),
        ([], "give --config_file"),
        (["--config_file", "fnoreg_2d_small.json"], "data_config.root"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv, message, exp_root, capsys):
    with pytest.raises(SystemExit) as exc:
        train(*argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len([line for line in err if line.startswith("error:")]) == 1
    assert message in err[-1]
    assert not exp_root.exists() or xp.list_experiments(2) == []


def test_bad_config_and_missing_checkpoint(tmp_path, exp_root, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**TINY, "train_config": {"learning_rate": 1}}))
    with pytest.raises(SystemExit):
        train("--config_file", str(bad))
    assert "unknown key train_config.learning_rate" in capsys.readouterr().err
    assert train("--config_file", write_config(tmp_path)) == 0
    with pytest.raises(SystemExit) as exc:
        train("--exp_num", "1", "--ckpt_epoch", "3")
    assert exc.value.code == 2
    assert "existing checkpoint epochs: 2, 4" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_two_processes_on_cpu(tmp_path, exp_root):
    cfg = write_config(tmp_path, train_config={"epochs": 2})
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(REPO / "train_2d.py"), "--config_file", cfg,
         "--gpu_num", "-1"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert xp.list_experiments(2) == [1]  # rank 0 alone created a folder
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert meta["runs"][0]["status"] == "finished" and meta["runs"][0]["world_size"] == 2
    assert (exp_root / "2d" / "exp1" / "weights.pth").is_file()


def test_epoch_order_depends_only_on_seed_and_epoch():
    from engine.train_loop import epoch_order

    a = epoch_order(20, 8, None, seed=1, epoch=3)
    assert a.shape == (2, 8)  # incomplete last batch dropped
    assert len(set(a.flatten().tolist())) == 16
    assert torch.equal(a, epoch_order(20, 8, None, seed=1, epoch=3))
    assert not torch.equal(a, epoch_order(20, 8, None, seed=1, epoch=4))
    long = epoch_order(5, 2, 7, seed=0, epoch=1)  # more steps than one pass: further permutations
    assert long.shape == (7, 2)
    assert sorted(long.flatten()[:5].tolist()) == [0, 1, 2, 3, 4]
    assert epoch_order(3, 8, None, seed=0, epoch=1).shape == (1, 3)  # batch larger than the split
