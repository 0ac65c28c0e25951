"""Sweeps end to end on tiny phantoms: grid expansion, outputs, skipping and resuming, collection."""

import csv
import json
import shutil

import pytest

from engine import experiment as xp
from engine import sweep as sweep_mod
from engine import sweep_points
from engine.checkpoint import list_checkpoint_epochs
from engine.sweep import sweep_main
from engine.sweep_grid import expand_grid, list_sweeps, param_path, parse_overrides, point_config, sweep_dir
from utils.cli import run_cli

TINY = {
    "description": "tiny sweep run",
    "model_name": "fnoreg",
    "model_config": {"hidden_channels": 4, "projection_channels": 8, "n_layers": 1, "n_modes": [8, 8]},
    "train_config": {"lr": 1e-3, "batch_size": 2, "epochs": 3, "steps_per_epoch": 1, "ckpt_freq": 1,
                     "image_log_freq": 5, "seed": 3},
    "data_config": {"dataset": "phantom", "phantom": {"n_subjects": 7, "shape": [32, 40], "seed": 0},
                    "splits": {"train": [0, 3], "val": [4, 5], "test": None}},
}


def sweep_args(config, *extra):
    return ["--config_file", str(config), "--dim", "2", "--gpu_num", "-1", "--param", "reg_param",
            "--values", "0.01", "1", "--set", "train_config.epochs=2", "--n_panels", "0", *extra]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A 2-point reg_param sweep of 2-epoch tiny runs, run once for the module."""
    root = tmp_path_factory.mktemp("experiments")
    config = root / "tiny.json"
    config.write_text(json.dumps(TINY))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
        assert sweep_main(sweep_args(config)) == 0
        yield root, config


# ----------------------------------------------------------------------------------- grid
def test_grid_is_the_cartesian_product_first_param_slowest():
    grid = expand_grid(["reg_param", "seg_param"], [[0.001, 0.01], [0, 0.1, 1]])
    assert len(grid) == 6
    assert grid[0] == {"reg_param": 0.001, "seg_param": 0} and grid[2] == {"reg_param": 0.001, "seg_param": 1}
    assert grid[3] == {"reg_param": 0.01, "seg_param": 0}


def test_parameter_names_overrides_and_point_configs():
    assert param_path("reg_param") == ("train_config", "reg_param")
    assert param_path("data_config.phantom.seed") == ("data_config", "phantom", "seed")
    assert parse_overrides(["train_config.epochs=2", "similarity=ncc", "size=null"]) == {
        "train_config.epochs": 2, "similarity": "ncc", "size": None}
    base = {"train_config": {"reg_param": 0.01}, "model_config": {}}
    config = point_config(base, {"reg_param": 0.1, "model_config.n_layers": 2})
    assert config == {"train_config": {"reg_param": 0.1}, "model_config": {"n_layers": 2}}
    assert base["train_config"]["reg_param"] == 0.01  # the base is not modified


@pytest.mark.parametrize("params, values, message", [
    (["reg_param"], [[0.1], [0.2]], "1 --param but 2 --values"),
    (["reg_param", "reg_param"], [[0.1], [0.2]], "given twice"),
    (["reg_param"], [[0.1, 0.1]], "repeat a value"),
    ([], [], "at least one --param"),
])
def test_bad_grids_are_user_errors(params, values, message):
    from utils.errors import UserError

    with pytest.raises(UserError, match=message):
        expand_grid(params, values)


@pytest.mark.parametrize("extra, message", [
    (["--param", "no_such_key", "--values", "1"], "unknown key train_config.no_such_key"),
    (["--param", "epochs", "--values", "0.5"], "train_config.epochs must be an integer"),
    (["--param", "loss.reg", "--values", "1"], "dotted path starting with one of"),
    (["--sweep", "7"], "sweep 7 not found"),
    (["--param", "reg_param", "--values", "1", "--eval_size", "0"], "--eval_size must be at least 2"),
    (["--param", "reg_param", "--values", "1", "--size", "1"], "--size must be at least 2"),
    (["--param", "reg_param", "--values", "1", "--n_panels", "-1"], "--n_panels must be non-negative"),
])
def test_invalid_points_exit_2_with_one_line_before_writing(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "exps"))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    argv = ["--config_file", str(config), "--dim", "2", *extra] if extra[0] != "--sweep" else ["--dim", "2", *extra]
    with pytest.raises(SystemExit) as exc:
        run_cli(sweep_main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
    assert list_sweeps(2) == [] and xp.list_experiments(2) == []


# ----------------------------------------------------------------------------------- outputs
def test_each_point_is_a_numbered_experiment_evaluated_on_val(swept):
    root, _ = swept
    sweep = json.loads((root / "2d" / "sweeps" / "sweep1" / "sweep.json").read_text())
    assert sweep["params"] == ["reg_param"] and [p["params"] for p in sweep["points"]] == [
        {"reg_param": 0.01}, {"reg_param": 1}]
    for k, exp in enumerate((1, 2)):
        folder = root / "2d" / f"exp{exp}"
        config = json.loads((folder / "config.json").read_text())
        assert config["train_config"]["reg_param"] == sweep["points"][k]["params"]["reg_param"]
        assert config["train_config"]["epochs"] == 2  # the --set override
        assert f"[sweep 2d/1#{sweep['token']} point {k}:" in config["description"]
        assert (folder / "weights.pth").is_file() and list_checkpoint_epochs(folder) == [1, 2]
        summary = sweep_points.find_val_summary(folder)
        assert summary["split"] == "val" and summary["checkpoint"] == "final"
        record = json.loads((root / "2d" / "sweeps" / "sweep1" / "points" / f"point{k}.json").read_text())
        assert record["exp_num"] == exp and record["status"] == "done"
        assert record["metrics"]["dice_mean"] == pytest.approx(summary["dice_mean"])


@pytest.fixture()
def swept_copy(swept, tmp_path, monkeypatch):
    """A copy of the finished sweep's experiments folder, to damage: (its root, sweep.json)."""
    copy = tmp_path / "exps"
    shutil.copytree(swept[0], copy)
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(copy))
    return copy, json.loads((copy / "2d" / "sweeps" / "sweep1" / "sweep.json").read_text())


def test_a_later_sweep_of_the_same_number_does_not_take_this_ones_experiments(swept_copy):
    # Sweep numbers start again at 1 when the sweeps folder is deleted and the experiments kept.
    copy, sweep = swept_copy
    assert sweep_points.find_experiment(sweep, 1) == 2
    shutil.rmtree(copy / "2d" / "sweeps")
    for token in ("0badc0de", None):  # a new sweep 1, and one written before sweeps had a token
        assert sweep_points.find_experiment({**sweep, "token": token}, 1) is None


def test_a_points_result_is_its_own_networks_plain_evaluation(swept, tmp_path):
    root, _ = swept
    folder = tmp_path / "exp1"
    shutil.copytree(root / "2d" / "exp1", folder)
    own = sweep_points.find_val_summary(folder)
    # Later evaluations of the same weights by other methods must not become the point's result.
    for k, change in enumerate([{"refine_steps": 3}, {"fold_repair_override": "on"}, {"score_on": "eval"}]):
        other = folder / "eval" / f"other{k}"
        other.mkdir()
        (other / "summary.json").write_text(json.dumps({**own, **change, "dice_mean": 0.99}))
    assert sweep_points.find_val_summary(folder)["dice_mean"] == own["dice_mean"]


def test_a_recorded_experiment_number_reused_by_another_run_is_not_the_points(swept_copy):
    copy, sweep = swept_copy
    assert sweep_points.find_experiment(sweep, 1) == 2
    # Experiment 2 deleted and its number taken by an unrelated run: point 1 has no experiment now.
    config = copy / "2d" / "exp2" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "description": "unrelated"}))
    assert sweep_points.find_experiment(sweep, 1) is None
    assert sweep_points.find_experiment(sweep, 0) == 1


def test_table_and_plot_files(swept):
    root, _ = swept
    folder = root / "2d" / "sweeps" / "sweep1"
    with open(folder / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["reg_param"] for r in rows] == ["0.01", "1"] and [r["exp_num"] for r in rows] == ["1", "2"]
    for r in rows:
        assert 0 <= float(r["dice_mean"]) <= 1 and float(r["folding_percent_mean"]) >= 0 and r["sdlogj_mean"]
    assert sum(int(r["best"]) for r in rows) == 1
    markdown = (folder / "results.md").read_text()
    assert "| point | reg_param | Dice (val) |" in markdown and "exp1" in markdown and "**best**" in markdown
    png = (folder / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


# ----------------------------------------------------------------------------------- re-runs
def test_same_command_finds_the_sweep_and_trains_nothing(swept, monkeypatch, capsys):
    root, config = swept
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
    monkeypatch.setattr(sweep_mod, "run_point", lambda *a, **k: pytest.fail("a finished point was run again"))
    assert sweep_main(sweep_args(config)) == 0
    assert "continuing sweep 2d/1 (same config and grid)" in capsys.readouterr().err
    assert list_sweeps(2) == [1] and xp.list_experiments(2) == [1, 2]


def test_print_commands_creates_a_sweep_and_trains_nothing(swept, monkeypatch, capsys):
    root, config = swept
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
    argv = sweep_args(config, "--print_commands")
    argv[argv.index("train_config.epochs=2")] = "train_config.epochs=1"  # another grid: a new sweep
    assert sweep_main(argv) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("python sweep.py")]
    assert commands == [f"python sweep.py --dim 2 --sweep 2 --only_point {k} --gpu_num -1 --n_panels 0" for k in (0, 1)]
    assert "--array=0,1" in out and xp.list_experiments(2) == [1, 2]
    shutil.rmtree(sweep_dir(2, 2))


def test_rerun_evaluates_resumes_and_finds_lost_numbers(swept, monkeypatch):
    """Point 0 lost its evaluation and its record; point 1 lost its weights and last checkpoint."""
    root, config = swept
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
    folder = sweep_dir(2, 1)
    shutil.rmtree(root / "2d" / "exp1" / "eval")
    (folder / "points" / "point0.json").unlink()
    exp2 = root / "2d" / "exp2"
    (exp2 / "weights.pth").unlink()
    (exp2 / "checkpoints" / "ckpt_epoch2.pt").unlink()
    shutil.rmtree(exp2 / "eval")
    assert sweep_points.point_state(json.loads((folder / "sweep.json").read_text()), 0)["status"] == "trained"

    assert sweep_main(sweep_args(config)) == 0
    assert xp.list_experiments(2) == [1, 2]  # nothing trained from scratch
    runs1 = xp.read_metadata(root / "2d" / "exp1")["runs"]
    runs2 = xp.read_metadata(exp2)["runs"]
    assert [r["kind"] for r in runs1] == ["start"]  # evaluated only
    assert [r["kind"] for r in runs2] == ["start", "resume"] and runs2[-1]["start_epoch"] == 1
    assert runs2[-1]["status"] == "finished" and (exp2 / "weights.pth").is_file()
    for k, exp in ((0, 1), (1, 2)):
        record = json.loads((folder / "points" / f"point{k}.json").read_text())
        assert record["exp_num"] == exp and record["status"] == "done" and record["metrics"]["dice_mean"] is not None


def test_a_crashed_point_resumes_and_a_diverged_one_is_left_alone(swept_copy):
    copy, sweep = swept_copy
    exp2 = copy / "2d" / "exp2"
    (exp2 / "weights.pth").unlink()
    shutil.rmtree(exp2 / "eval")
    meta_path = exp2 / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for status, message, expected in [
        ("failed", "OutOfMemoryError: CUDA out of memory", "resume"),  # a crash: try again
        ("diverged", "non-finite training loss at epoch 2, step 1; training stopped", "failed"),
        ("failed", "non-finite training loss at epoch 2, step 1; training stopped", "failed"),  # written before "diverged"
    ]:
        meta["runs"][-1].update(status=status, message=message)
        meta_path.write_text(json.dumps(meta))
        state = sweep_points.point_state(sweep, 1)
        assert state["status"] == expected, (status, message)
        if expected == "resume":
            assert state["detail"] == "from epoch 2, after a crash (OutOfMemoryError: CUDA out of memory)"


def test_a_live_lock_marks_a_point_running(swept, monkeypatch):
    root, _ = swept
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
    sweep = json.loads((sweep_dir(2, 1) / "sweep.json").read_text())
    with sweep_points.PointLock(sweep_dir(2, 1), 1):
        lock = json.loads((sweep_dir(2, 1) / "points" / "point1.lock").read_text())
        assert sweep_points.lock_alive({**lock, "pid": 1})  # pid 1 is alive; our own pid counts as stale
        assert not sweep_points.lock_alive({**lock, "pid": 2 ** 22 + 7})  # no such process: stale
        assert sweep_points.lock_alive({**lock, "host": "elsewhere"}) and \
            not sweep_points.lock_alive({**lock, "host": "elsewhere"}, takeover=True)
    assert not (sweep_dir(2, 1) / "points" / "point1.lock").exists()
    assert sweep_points.point_state(sweep, 1)["status"] == "done"
