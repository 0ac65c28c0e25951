"""Training end to end on tiny phantoms: folders, restart, resume, determinism, signals, errors, DDP."""

import json
import os
import re
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


def interrupted_run(cfg, at_step, monkeypatch):
    """A new run of ``cfg`` sent SIGINT (as if Ctrl-C) while fetching its ``at_step``-th training batch."""
    from engine.batches import DeviceSplit

    original, calls = DeviceSplit.batch, {"n": 0}

    def interrupting(self, idx):
        calls["n"] += len(self) == 20  # count training batches only (5 subjects: 20 ordered pairs)
        if calls["n"] == at_step and len(self) == 20:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, idx)

    monkeypatch.setattr(DeviceSplit, "batch", interrupting)
    try:
        return train("--config_file", cfg)
    finally:
        monkeypatch.setattr(DeviceSplit, "batch", original)


def test_interrupt_saves_checkpoint_and_resume_continues_exactly(tmp_path, exp_root, monkeypatch):
    cfg = write_config(tmp_path)
    assert train("--config_file", cfg) == 0
    straight = weights(exp_root / "2d" / "exp1")

    assert interrupted_run(cfg, 5, monkeypatch) == 130  # 2nd step of epoch 2 (3 steps per epoch)
    folder = exp_root / "2d" / "exp2"
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["runs"][-1]["status"] == "interrupted"
    assert list_checkpoint_epochs(folder) == [2]
    state = torch.load(folder / "checkpoints" / "ckpt_epoch2.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2
    assert not (folder / "weights.pth").exists()

    assert train("--exp_num", "2", "--ckpt_epoch", "2") == 0
    assert_same_weights(weights(folder), straight)
    state = torch.load(folder / "checkpoints" / "ckpt_epoch2.pt", weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 0  # the whole epoch now, as the name says


def test_an_interruptions_checkpoint_becomes_the_whole_epochs(tmp_path, exp_root, monkeypatch):
    cfg = write_config(tmp_path, train_config={"ckpt_freq": 4})  # epoch 3 is no checkpoint epoch
    assert interrupted_run(cfg, 8, monkeypatch) == 130  # 2nd step of epoch 3
    folder = exp_root / "2d" / "exp1"
    assert torch.load(folder / "checkpoints" / "ckpt_epoch3.pt", weights_only=True)["step"] == 2
    (folder / "eval" / "epoch3_32").mkdir(parents=True)  # an evaluation of the partial checkpoint
    assert train("--exp_num", "1", "--ckpt_epoch", "3") == 0
    assert (folder / "previous_runs" / "run1_after_epoch3" / "eval" / "epoch3_32").is_dir()  # scored other weights
    state = torch.load(folder / "checkpoints" / "ckpt_epoch3.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (3, 0) and list_checkpoint_epochs(folder) == [3, 4]


def test_an_interruption_after_a_non_finite_step_saves_no_checkpoint(tmp_path, exp_root, monkeypatch, capsys):
    from losses import registration

    original, calls = registration.RegistrationLoss.__call__, {"n": 0}

    def loss(self, *args, **kwargs):
        total, terms = original(self, *args, **kwargs)
        calls["n"] += 1
        return (total * float("nan") if calls["n"] == 2 else total), terms  # step 2 diverges

    monkeypatch.setattr(registration.RegistrationLoss, "__call__", loss)
    cfg = write_config(tmp_path, train_config={"steps_per_epoch": 6})
    # Ctrl-C while step 3 fetches its batch: the loop stops before its next finiteness check.
    assert interrupted_run(cfg, 3, monkeypatch) == 1
    assert "non-finite training loss at epoch 1, step 2" in capsys.readouterr().err
    assert list_checkpoint_epochs(exp_root / "2d" / "exp1") == []  # no checkpoint of broken weights


def test_processes_must_share_a_batch_capped_by_a_small_split(tmp_path, exp_root, monkeypatch, capsys):
    import engine.training as training
    from utils.distributed import DistInfo

    # Two processes (the group itself is not needed: the check comes first) and 3 training pairs.
    monkeypatch.setattr(training, "init_distributed", lambda use_cuda: DistInfo(0, 2, 0))
    cfg = write_config(tmp_path, train_config={"batch_size": 4})
    raw = json.loads(Path(cfg).read_text())
    raw["data_config"].update(splits={"train": [0, 3], "val": [5, 7], "test": None}, train_pairs="consecutive_one_way")
    Path(cfg).write_text(json.dumps(raw))
    with pytest.raises(SystemExit) as exc:
        train("--config_file", cfg)
    assert exc.value.code == 2
    assert "3 pairs, so batches of 3, which 2 processes cannot share equally" in capsys.readouterr().err
    assert not exp_root.exists() or xp.list_experiments(2) == []


def test_voxelmorph_experiments_from_before_the_strided_presets_still_load_and_resume(tmp_path, exp_root):
    from engine.checkpoint import load_model

    # Trained as the vxm1 preset was until 2026-11-30 (the max-pool U-Net), then stored the way
    # that version stored it: the resolved preset, with no "architecture" key anywhere.
    cfg = write_config(tmp_path)
    raw = json.loads(Path(cfg).read_text())
    raw["model_name"], raw["model_config"] = "voxelmorph", {"preset": "vxm1", "architecture": "unet"}
    raw["data_config"]["phantom"]["shape"] = [32, 48]
    Path(cfg).write_text(json.dumps(raw))
    assert train("--config_file", cfg) == 0
    folder = exp_root / "2d" / "exp1"

    def strip(model_config):
        model_config.pop("architecture", None)  # the checkpoint shares one dict between its two copies
    stored = json.loads((folder / "config.json").read_text())
    strip(stored["model_config"])
    (folder / "config.json").write_text(json.dumps(stored))
    for path in [folder / "weights.pth", *sorted((folder / "checkpoints").glob("*.pt"))]:
        payload = torch.load(path, weights_only=True)
        strip(payload["model_config"])
        if "config" in payload:
            strip(payload["config"]["model_config"])
        torch.save(payload, path)

    model, info = load_model(folder)  # evaluate_2d.py and register.py load this way
    assert model.architecture == "unet" and info["model_config"]["architecture"] == "unet"
    assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0  # a resume rebuilds the same network


def test_restart_keeps_previous_run(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["train_config"]["epochs"] = 2  # the user edits the stored config, then restarts
    cfg["description"] = "shorter"
    (folder / "config.json").write_text(json.dumps(cfg))
    assert train("--exp_num", "1") == 0
    assert json.loads((folder / "metadata.json").read_text())["description"] == "shorter"
    assert (folder / "previous_runs" / "run1" / "weights.pth").is_file()
    assert list_checkpoint_epochs(folder / "previous_runs" / "run1") == [2, 4]
    assert list_checkpoint_epochs(folder) == [2]
    assert (folder / "logs" / "run1").is_dir() and (folder / "logs" / "run2").is_dir()
    meta = json.loads((folder / "metadata.json").read_text())
    assert [r["kind"] for r in meta["runs"]] == ["start", "restart"]


def test_archives_are_named_after_the_runs_their_logs_are(tmp_path, exp_root, capsys):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0  # run 1 continues (logs/run1)
    assert train("--exp_num", "1") == 0  # run 1 replaced by run 2
    assert sorted(p.name for p in (folder / "previous_runs").iterdir()) == ["run1", "run1_after_epoch2"]
    assert sorted(p.name for p in (folder / "logs").iterdir()) == ["run1", "run2"]
    # Without metadata.json the run number is unknown: refused before anything moves.
    (folder / "metadata.json").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train("--exp_num", "1")
    assert exc.value.code == 2 and "metadata" in capsys.readouterr().err
    assert (folder / "weights.pth").is_file() and sorted(p.name for p in (folder / "previous_runs").iterdir()) == [
        "run1", "run1_after_epoch2"]


def test_an_experiment_training_now_is_not_restarted_under_it(tmp_path, exp_root, capsys):
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 2})) == 0
    folder = exp_root / "2d" / "exp1"
    meta = json.loads((folder / "metadata.json").read_text())
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        meta["runs"][-1].update(status="running", pid=other.pid)  # as a live run's entry reads
        (folder / "metadata.json").write_text(json.dumps(meta))
        capsys.readouterr()
        for argv in (["--exp_num", "1"], ["--exp_num", "1", "--ckpt_epoch", "2"]):
            with pytest.raises(SystemExit) as exc:
                train(*argv)
            assert exc.value.code == 2 and f"training now (process {other.pid}" in capsys.readouterr().err
        assert (folder / "weights.pth").is_file() and not (folder / "previous_runs").exists()
    finally:
        other.kill()
        other.wait()
    assert train("--exp_num", "1") == 0  # a run that died without closing its entry does not block


def test_resume_from_an_earlier_epoch_keeps_what_came_after(tmp_path, exp_root, capsys):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    (folder / "eval" / "final_32").mkdir(parents=True)
    (folder / "eval" / "epoch2_32").mkdir()
    (folder / "eval" / "epoch4_32").mkdir()
    (folder / "eval" / "final_table.csv").write_text("a user's own file")  # not an evaluation folder
    old4 = (folder / "checkpoints" / "ckpt_epoch4.pt").read_bytes()
    assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0
    kept = folder / "previous_runs" / "run1_after_epoch2"
    assert "resume: what the run wrote after epoch 2" in capsys.readouterr().err
    assert (kept / "checkpoints" / "ckpt_epoch4.pt").read_bytes() == old4 and (kept / "weights.pth").is_file()
    assert sorted(p.name for p in (kept / "eval").iterdir()) == ["epoch4_32", "final_32"]
    assert (folder / "eval" / "epoch2_32").is_dir() and list_checkpoint_epochs(folder) == [2, 4]
    assert (folder / "eval" / "final_table.csv").is_file()


@pytest.mark.parametrize("section, key, value, refused", [
    ("train_config", "lr", 0.1, True),
    ("train_config", "reg_param", 1.0, True),
    ("model_config", "n_layers", 2, True),
    ("data_config", "splits", {"train": [0, 3], "val": [5, 7], "test": None}, True),
    ("train_config", "epochs", 6, False),
    ("train_config", "ckpt_freq", 1, False),
])
def test_resume_refuses_an_edited_config_that_would_mix_two_runs(tmp_path, exp_root, capsys, section, key, value,
                                                                 refused):
    assert train("--config_file", write_config(tmp_path)) == 0
    folder = exp_root / "2d" / "exp1"
    cfg = json.loads((folder / "config.json").read_text())
    cfg[section][key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    before = sorted(p.name for p in folder.rglob("*"))
    capsys.readouterr()
    if refused:
        with pytest.raises(SystemExit) as exc:
            train("--exp_num", "1", "--ckpt_epoch", "2")
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert exc.value.code == 2 and len(errors) == 1 and f": {section}.{key} differ ({section}.{key}: " in errors[0]
        assert sorted(p.name for p in folder.rglob("*")) == before  # nothing moved or written
    else:
        assert train("--exp_num", "1", "--ckpt_epoch", "2") == 0
        assert f"notice: resuming with {folder / 'config.json'}'s {section}.{key} = {value}" in capsys.readouterr().err


def test_resume_cannot_extend_a_cosine_schedule(tmp_path, exp_root, capsys):
    cosine = {"lr_schedule": {"type": "cosine"}}
    assert train("--config_file", write_config(tmp_path, train_config=cosine)) == 0
    folder = exp_root / "2d" / "exp1"
    cfg = json.loads((folder / "config.json").read_text())
    cfg["train_config"]["epochs"] = 8
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit):
        train("--exp_num", "1", "--ckpt_epoch", "4")
    assert "(train_config.epochs: 8 now, 4 then)" in capsys.readouterr().err


def test_size_flag_sets_training_shape(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 1}), "--size", "16") == 0
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert meta["train_size"] == [16, 20]


def test_resume_with_the_checkpoints_size_leaves_the_config_alone(tmp_path, exp_root, capsys):
    # --size equal to the data's own shape is accepted on resume; it must not become an "edit" that
    # the next resume refuses.
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 6})) == 0
    assert train("--exp_num", "1", "--ckpt_epoch", "2", "--size", "32") == 0
    assert train("--exp_num", "1", "--ckpt_epoch", "4") == 0
    ckpt = torch.load(exp_root / "2d" / "exp1" / "checkpoints" / "ckpt_epoch6.pt", weights_only=True)
    assert ckpt["config"]["train_config"]["size"] is None
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train("--exp_num", "1", "--ckpt_epoch", "4", "--size", "16")
    assert "trained at (32, 40) but --size gives (16, 20)" in capsys.readouterr().err


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
    assert meta["runs"][-1]["status"] == "diverged"
    assert not (exp_root / "2d" / "exp1" / "weights.pth").exists()


def test_a_crash_marks_the_run_failed_with_its_error(tmp_path, exp_root, monkeypatch):
    from losses import registration

    def crash(self, *args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(registration.RegistrationLoss, "__call__", crash)
    with pytest.raises(RuntimeError, match="device lost"):
        train("--config_file", write_config(tmp_path))
    run = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())["runs"][-1]
    assert run["status"] == "failed" and run["message"] == "RuntimeError: device lost"


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
    # The line that started the job, not one worker's.
    assert meta["runs"][0]["command"].startswith("torchrun --standalone --nproc_per_node=2 ")
    # The progress bar's loss is the whole batch's, as logged, not rank 0's share.
    history = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())
    shown = re.findall(r"loss=([-+.\deE]+)", proc.stderr)
    assert shown and shown[-1] == f"{history['train_loss'][-1]:.4g}", (shown, history["train_loss"])
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


# --------------------------------------------------------------------- issue 8: items 3, 5, 6, 8-11
def test_validation_uses_the_weight_cache_and_frees_it(tmp_path, exp_root, monkeypatch):
    from engine.train_loop import TrainingLoop
    from models.spectral import SpectralConv

    seen = {"enabled": [], "after": []}
    original_weight = SpectralConv.weight_for

    def recording(self, slices, *args):
        if not torch.is_grad_enabled():
            seen["enabled"].append(self._cache_enabled)
        return original_weight(self, slices, *args)

    def wrap(method):
        def run(self, *args):
            out = method(self, *args)
            layers = [m for m in self.model.modules() if isinstance(m, SpectralConv)]
            seen["after"].append(bool(layers) and all(m._cache is None and not m._cache_enabled for m in layers))
            return out
        return run

    monkeypatch.setattr(SpectralConv, "weight_for", recording)
    monkeypatch.setattr(TrainingLoop, "_validate", wrap(TrainingLoop._validate))
    monkeypatch.setattr(TrainingLoop, "_log_panel", wrap(TrainingLoop._log_panel))
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 2})) == 0
    assert seen["enabled"] and all(seen["enabled"])  # every inference forward ran with the cache on
    assert seen["after"] == [True] * 3  # 2 validations, 1 panel (epoch 2): nothing held afterwards


def test_logged_lr_is_the_one_the_epoch_trained_with(tmp_path, exp_root):
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 3, "steps_per_epoch": 1})) == 0
    history = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())
    assert history["lr"] == pytest.approx([1e-3, 9e-4, 8.1e-4])  # step schedule, gamma 0.9 after each epoch


@pytest.mark.parametrize("unlabelled", [[6], [4, 5, 6, 7]], ids=["mixed", "none-labelled"])
def test_validation_with_unlabelled_pairs(tmp_path, exp_root, unlabelled, capsys):
    from data.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path / "data", 2, 8, shape=[32, 40], seed=0)
    for subject in unlabelled:
        (root / f"PHANTOM_{subject:04d}" / "slice_seg24.nii.gz").unlink()
    # Validation pairs (4,5) (5,6) | (6,7) (7,6) | (6,5) (5,4) in batches of two: mixed, then no labelled pair.
    cfg = write_config(tmp_path, train_config={"epochs": 1, "steps_per_epoch": 1, "val_batch_size": 2,
                                               "seg_param": 0.01})
    raw = json.loads(Path(cfg).read_text())
    raw["data_config"] = {"dataset": "oasis", "root": str(root), "splits": {"train": [0, 3], "val": [4, 7],
                                                                            "test": None}}
    Path(cfg).write_text(json.dumps(raw))
    assert train("--config_file", cfg) == 0
    # Said once, before training: validation Dice covers the labelled pairs only.
    assert f"{len(unlabelled)} of 4 subject(s) of the val split have no label map" in capsys.readouterr().err
    history = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())
    assert len(history["val_loss"]) == 1 and len(history["val_folding"]) == 1
    if len(unlabelled) == 1:
        assert 0 < history["val_dice"][0] <= 1 and 0 < history["initial_val_dice"] <= 1
        # The soft-Dice term is the mean over the labelled pairs (4,5) and (5,4), not diluted by the
        # others, and the loss is the weighted sum of the terms' means.
        from data.dataset import load_split
        from engine.checkpoint import load_model
        from losses import RegistrationLoss, one_hot
        from models import warp

        model, _ = load_model(exp_root / "2d" / "exp1")
        split = load_split(raw["data_config"], 2, "val")
        images, labels = split.images, split.labels.long()
        moving, fixed = torch.stack([images[0], images[1]]), torch.stack([images[1], images[0]])
        moving_l, fixed_l = torch.stack([labels[0], labels[1]]), torch.stack([labels[1], labels[0]])
        with torch.no_grad():
            flow = model(moving, fixed)
            ids = split.label_ids
            loss = RegistrationLoss(seg_param=0.01)
            _, terms = loss(fixed, warp(moving, flow), flow, one_hot(fixed_l, ids), warp(one_hot(moving_l, ids), flow))
        assert history["val_dice_loss"][0] == pytest.approx(float(terms["dice_loss"]), rel=1e-5)
        expected = history["val_similarity"][0] + 0.01 * history["val_smoothness"][0] + 0.01 * history[
            "val_dice_loss"][0]
        assert history["val_loss"][0] == pytest.approx(expected, rel=1e-9)
    else:
        assert "val_dice" not in history and "val_dice_loss" not in history


def test_size_zero_is_a_one_line_error(tmp_path, exp_root, capsys):
    for size in ("0", "-80"):
        with pytest.raises(SystemExit) as exc:
            train("--config_file", write_config(tmp_path), "--size", size)
        assert exc.value.code == 2
        (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert "--size must be at least 2" in line and size in line
    assert not exp_root.exists() or xp.list_experiments(2) == []


def test_missing_config_json_says_how_to_restore_it(tmp_path, exp_root, capsys):
    import shlex

    folder = exp_root / "2d" / "exp1"
    (folder / "checkpoints").mkdir(parents=True)
    config = json.loads(json.dumps(TINY))
    torch.save({"config": config, "epoch": 2}, folder / "checkpoints" / "ckpt_epoch2.pt")
    torch.save({"config": {"stale": True}, "epoch": 1}, folder / "checkpoints" / "ckpt_epoch1.pt")
    with pytest.raises(SystemExit) as exc:
        train("--exp_num", "1")
    assert exc.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert "experiment 1 has no config.json" in line and "not found" not in line and "ckpt_epoch2.pt" in line
    # The command it gives restores the file.
    command = line.split("holds: ", 1)[1]
    subprocess.run(shlex.split(command), check=True, cwd=REPO, capture_output=True)
    assert json.loads((folder / "config.json").read_text()) == config


def test_paper_command_line_config_file_with_exp_num(tmp_path, exp_root, capsys):
    cfg = write_config(tmp_path, train_config={"epochs": 2})
    assert train("--config_file", cfg) == 0
    capsys.readouterr()
    # The paper's resume line: the stored config trains, the same config file gives no notice.
    assert train("--config_file", cfg, "--exp_num", "1", "--ckpt_epoch", "2") == 0
    assert "differs from experiment" not in capsys.readouterr().err
    changed = write_config(tmp_path, train_config={"epochs": 2, "lr": 5e-4},
                           model_config={"n_layers": 2})
    stored = (exp_root / "2d" / "exp1" / "config.json").read_text()
    assert train("--config_file", changed, "--exp_num", "1") == 0  # restart
    (notice,) = [line for line in capsys.readouterr().err.splitlines() if "differs from experiment" in line]
    assert "model_config.n_layers, train_config.lr" in notice and "stored" in notice
    assert (exp_root / "2d" / "exp1" / "config.json").read_text() == stored
    assert json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())["lr"][0] == 1e-3


DDP_WORKER = '''
import os, sys
sys.path.insert(0, {repo!r})
from losses import registration
from engine.training import train_main
from utils.cli import run_cli

original = registration.RegistrationLoss.__call__
calls = {{"n": 0}}

def loss(self, *args, **kwargs):
    total, terms = original(self, *args, **kwargs)
    calls["n"] += 1
    # Rank 1 alone diverges at the first step of epoch 2 (rank 1 never validates: 3 calls per epoch).
    if os.environ["RANK"] == "1" and calls["n"] > 3 and {nan}:
        total = total * float("nan")
    return total, terms

registration.RegistrationLoss.__call__ = loss
sys.exit(run_cli(lambda a: train_main(2, a)))
'''


DRAW_WORKER = '''
import os, signal, sys
sys.path.insert(0, {repo!r})
import torch
from losses import registration
from engine.training import train_main
from utils.cli import run_cli

original = registration.RegistrationLoss.__call__

calls = [0]

def loss(self, *args, **kwargs):
    # What a random layer would draw at every step of this process, one line per step.
    with open(os.path.join({out!r}, os.environ["TAG"] + "_rank" + os.environ["RANK"]), "a") as f:
        f.write(repr(torch.rand(2).tolist()) + "\\n")
    calls[0] += 1
    if os.environ["RANK"] == "1" and calls[0] == int(os.environ.get("INTERRUPT_AT", 0)):
        os.kill(os.getpid(), signal.SIGINT)  # as if Ctrl-C reached this process alone
    return original(self, *args, **kwargs)

registration.RegistrationLoss.__call__ = loss
sys.exit(run_cli(lambda a: train_main(2, a)))
'''


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_processes_draw_different_random_numbers(tmp_path, exp_root):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TAG": "run"}
    cfg = write_config(tmp_path, train_config={"epochs": 1, "steps_per_epoch": 1})
    worker = tmp_path / "worker.py"
    worker.write_text(DRAW_WORKER.format(repo=str(REPO), out=str(tmp_path)))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), "--config_file", cfg,
                           "--gpu_num", "-1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    draws = [(tmp_path / f"run_rank{r}").read_text().splitlines()[0] for r in (0, 1)]  # first steps
    assert draws[0] != draws[1]  # stochastic depth must not drop the same blocks on every process
    # Rank 0's stream is the single-process one: seeded, then the model's initialisation.
    torch.manual_seed(TINY["train_config"]["seed"])
    from models import build_model
    build_model("fnoreg", TINY["model_config"], 2)
    assert draws[0] == repr(torch.rand(2).tolist())


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_resume_continues_every_process_random_stream(tmp_path, exp_root):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    worker = tmp_path / "worker.py"
    worker.write_text(DRAW_WORKER.format(repo=str(REPO), out=str(tmp_path)))

    def run(tag, *argv, code=0, **extra):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TAG": tag, **extra}
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), "--gpu_num", "-1", *argv],
                              env=env, capture_output=True, text=True, timeout=300)
        if code is not None:
            assert proc.returncode == code, proc.stderr[-3000:]
        return proc

    def draws(tag, rank):
        return (tmp_path / f"{tag}_rank{rank}").read_text().splitlines()

    settings = {"steps_per_epoch": 1, "ckpt_freq": 1, "val_freq": 1}
    run("straight", "--config_file", write_config(tmp_path, train_config={"epochs": 2, **settings}))
    run("first", "--config_file", write_config(tmp_path, train_config={"epochs": 1, **settings}))
    stored = exp_root / "2d" / "exp2" / "config.json"
    config = json.loads(stored.read_text())
    config["train_config"]["epochs"] = 2  # more epochs: a change a resume accepts
    stored.write_text(json.dumps(config))
    run("resumed", "--exp_num", "2", "--ckpt_epoch", "1")
    for rank in (0, 1):
        # (Rank 0's lines include its validation's calls.) The resumed run draws what the
        # uninterrupted run drew after epoch 1, on every process.
        assert draws("first", rank) + draws("resumed", rank) == draws("straight", rank), rank
    assert draws("straight", 0) != draws("straight", 1)
    state = torch.load(exp_root / "2d" / "exp2" / "checkpoints" / "ckpt_epoch1.pt", weights_only=True)
    assert len(state["rng"]["ranks"]) == 2
    assert torch.equal(state["rng"]["torch"], state["rng"]["ranks"][0]["torch"])

    # Interrupted on rank 1 in the first step of epoch 2 (its third training step): every rank
    # stops after that step, the checkpoint keeps both streams, and the resume continues them.
    settings = {"epochs": 2, "steps_per_epoch": 2, "ckpt_freq": 1, "val_freq": 1}
    run("whole", "--config_file", write_config(tmp_path, train_config=settings))
    run("cut", "--config_file", write_config(tmp_path, train_config=settings), code=None, INTERRUPT_AT="3")
    state = torch.load(exp_root / "2d" / "exp4" / "checkpoints" / "ckpt_epoch2.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 1 and len(state["rng"]["ranks"]) == 2
    run("rest", "--exp_num", "4", "--ckpt_epoch", "2")
    for rank in (0, 1):
        assert draws("cut", rank) + draws("rest", rank) == draws("whole", rank), rank


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
                    reason="torchrun not installed")
def test_ddp_nan_on_one_rank_stops_every_rank_and_loss_is_over_all_ranks(tmp_path, exp_root):
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # FNO has no batch norm, so two processes of one pair each train exactly like one process of two pairs.
    cfg = write_config(tmp_path, model_config={"hidden_channels": 4, "projection_channels": 8, "n_layers": 1,
                                               "n_modes": [8, 8]}, train_config={"epochs": 2})
    raw = json.loads(Path(cfg).read_text())
    raw["model_name"] = "fno"
    Path(cfg).write_text(json.dumps(raw))
    worker = tmp_path / "worker.py"
    worker.write_text(DDP_WORKER.format(repo=str(REPO), nan=True))
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(worker), "--config_file", cfg,
                           "--gpu_num", "-1"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: non-finite training loss at epoch 2, a step on another rank" in proc.stderr, proc.stderr[-3000:]
    meta = json.loads((exp_root / "2d" / "exp1" / "metadata.json").read_text())
    assert meta["runs"][0]["status"] == "diverged" and "non-finite" in meta["runs"][0]["message"]
    ddp = json.loads((exp_root / "2d" / "exp1" / "history.json").read_text())

    # The logged epoch-1 loss is the mean over both ranks' pairs: what one process with both pairs logs.
    assert train("--config_file", cfg) == 0
    single = json.loads((exp_root / "2d" / "exp2" / "history.json").read_text())
    assert ddp["train_loss"][0] == pytest.approx(single["train_loss"][0], rel=1e-5)
    assert ddp["train_similarity"][0] == pytest.approx(single["train_similarity"][0], rel=1e-5)
