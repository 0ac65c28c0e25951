"""Sweep logic without training: the best-point rule, coordinate descent's carry-over, the parallel
scheduler and the commands it launches (a fake runner stands in for training and evaluation)."""

import json

from engine import experiment as xp
from engine import sweep as sweep_mod
from engine.sweep import schedule, sweep_main
from engine.sweep_grid import list_sweeps, sweep_dir
from engine.sweep_points import write_record
from engine.sweep_report import choose_best, draw_sweep, result_rows, save_coordinate_plot
from utils.fileio import write_json

MODEL = {2: {"hidden_channels": 4, "projection_channels": 8, "n_layers": 1, "n_modes": [8, 8]},
         3: {"hidden_channels": 3, "projection_channels": 6, "n_layers": 1, "n_modes": [6, 6, 6]}}
SHAPE = {2: [32, 40], 3: [24, 28, 32]}
# The companion paper's Figure 3: Dice and folding % of each value (lambda in 2D, gamma in 3D).
STAGE1 = {0.001: (0.70, 0.9), 0.01: (0.75, 0.6), 0.1: (0.72, 0.1)}
STAGE2 = {0.01: (0.833, 0.329), 0.1: (0.836, 1.349), 1: (0.832, 4.389)}


def tiny_config(path, dim):
    path.write_text(json.dumps({
        "description": f"tiny {dim}D", "model_name": "fnoreg", "model_config": MODEL[dim],
        "train_config": {"batch_size": 2, "epochs": 1, "steps_per_epoch": 1},
        "data_config": {"dataset": "phantom", "phantom": {"n_subjects": 6, "shape": SHAPE[dim], "seed": 0}}}))
    return str(path)


def rows_of(*points):
    return [{"point": k, "params": {"seg_param": v}, "status": "done", "dice_mean": d, "dice_std": 0.01,
             "folding_percent_mean": f, "folding_percent_std": 0.1, "initial_dice_mean": 0.5, "sdlogj_mean": 0.1,
             "exp_num": k + 1} for k, (v, (d, f)) in enumerate(points)]


def test_best_rule_dice_then_folding_within_tolerance_and_cap():
    rows = rows_of(*STAGE2.items())
    assert choose_best(rows)["params"] == {"seg_param": 0.1}  # highest Dice
    assert choose_best(rows, dice_tol=0.005)["params"] == {"seg_param": 0.01}  # the paper's choice
    assert choose_best(rows, max_folding=1.0)["params"] == {"seg_param": 0.01}
    assert choose_best(rows, max_folding=0.1) is None
    tie = rows_of((0.5, (0.8, 2.0)), (0.6, (0.8, 1.0)))
    assert choose_best(tie)["params"] == {"seg_param": 0.6}  # equal Dice: lower folding
    rows[1]["status"] = "failed"
    assert choose_best(rows)["params"] == {"seg_param": 0.01}  # a failed point never wins


def fake_runner(calls):
    """Stands in for run_point: makes the experiment folder an evaluated run would leave."""

    def run(sweep, index, gpu_num=0, takeover=False, progress=True, n_panels=1):
        dim, folder = sweep["dim"], sweep_dir(sweep["dim"], sweep["sweep"])
        point = sweep["points"][index]
        config = json.loads((folder / point["config"]).read_text())
        exp_num, exp_folder = xp.create_experiment(dim)
        write_json(exp_folder / "config.json", config)
        (exp_folder / "weights.pth").write_bytes(b"")
        tc = config["train_config"]
        table = STAGE1 if dim == 2 else STAGE2
        dice, fold = table[tc["reg_param"] if dim == 2 else tc["seg_param"]]
        calls.append((dim, index, tc["reg_param"], tc["seg_param"]))
        summary = {"split": "val", "checkpoint": "final", "eval_size": min(SHAPE[dim]), "eval_shape": SHAPE[dim],
                   "full_shape": SHAPE[dim], "dice_mean": dice, "dice_std": 0.02, "initial_dice_mean": 0.5,
                   "folding_percent_mean": fold, "folding_percent_std": 0.1, "sdlogj_mean": 0.2, "n_pairs": 4}
        (exp_folder / "eval" / "final_anything_val").mkdir(parents=True)
        write_json(exp_folder / "eval" / "final_anything_val" / "summary.json", summary)
        return write_record(folder, index, exp_num=exp_num, status="done")

    return run


def coordinate_argv(tmp_path, *extra):
    return ["--mode", "coordinate", "--config_file", tiny_config(tmp_path / "c2.json", 2), "--dim", "2",
            "--gpu_num", "-1", "--stage1_param", "reg_param", "--stage1_values", "0.001", "0.01", "0.1",
            "--stage2_param", "seg_param", "--stage2_values", "0.01", "0.1", "1",
            "--stage2_config", tiny_config(tmp_path / "c3.json", 3), "--stage2_dim", "3", "--dice_tol", "0.005",
            *extra]


def test_coordinate_descent_carries_the_best_value_into_stage_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "exps"))
    calls = []
    monkeypatch.setattr(sweep_mod, "run_point", fake_runner(calls))

    # Stage 2 waits for stage 1: printing stage 1's commands creates no stage-2 sweep.
    assert sweep_main(coordinate_argv(tmp_path, "--print_commands")) == 0
    assert "stage 2 starts once every stage-1 point is finished" in capsys.readouterr().out
    assert list_sweeps(2) == [1] and list_sweeps(3) == [] and calls == []

    assert sweep_main(coordinate_argv(tmp_path)) == 0
    assert [c[:2] for c in calls] == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    assert all(c[2] == 0.01 for c in calls[3:])  # stage 1's best lambda in every stage-2 point
    assert [c[3] for c in calls[3:]] == [0.01, 0.1, 1]
    stage2 = json.loads((sweep_dir(3, 1) / "sweep.json").read_text())
    assert stage2["stage"]["carried"] == {"reg_param": 0.01} and stage2["stage"]["previous"] == {"dim": 2, "sweep": 1}
    for k in range(3):
        config = json.loads((sweep_dir(3, 1) / "configs" / f"point{k}.json").read_text())
        assert config["train_config"]["reg_param"] == 0.01 and config["dim"] == 3
    text = (sweep_dir(3, 1) / "coordinate.md").read_text()
    assert "Chosen: reg_param=0.01, seg_param=0.01" in text
    assert (sweep_dir(3, 1) / "coordinate.png").stat().st_size > 20_000
    assert (sweep_dir(2, 1) / "sweep.png").is_file() and (sweep_dir(3, 1) / "results.csv").is_file()

    # The same command again: both stages found, nothing run.
    calls.clear()
    assert sweep_main(coordinate_argv(tmp_path)) == 0
    assert calls == [] and list_sweeps(2) == [1] and list_sweeps(3) == [1]


class FakeProc:
    def __init__(self, log, index, slot, polls, code=0):
        self.log, self.index, self.slot, self.left, self.code = log, index, slot, polls, code

    def poll(self):
        self.left -= 1
        if self.left > 0:
            return None
        if ("end", self.index) not in self.log:
            self.log.append(("end", self.index))
        return self.code

    def wait(self):
        return self.code


def test_schedule_runs_one_point_per_slot_and_reuses_freed_slots():
    log = []

    def launch(index, slot):
        busy = [e for e in log if e[0] == "start" and e[2] == slot and ("end", e[1]) not in log]
        assert not busy, f"slot {slot} given to point {index} while point {busy[0][1]} runs"
        log.append(("start", index, slot))
        return FakeProc(log, index, slot, polls=1 + index % 3)

    codes = schedule(range(7), [0, 1, -1], launch, poll_s=0, sleep=lambda s: None)
    assert codes == {k: 0 for k in range(7)}
    starts = [e for e in log if e[0] == "start"]
    assert [e[1] for e in starts] == list(range(7)) and {e[2] for e in starts} == {0, 1, -1}
    assert [e[2] for e in starts[:3]] == [0, 1, -1]


def test_schedule_stops_launching_after_an_interrupted_child():
    log = []
    codes = schedule(range(5), [0], lambda i, s: FakeProc(log, i, s, polls=1, code=130 if i == 1 else 0),
                     poll_s=0, sleep=lambda s: None)
    assert codes == {0: 0, 1: 130}


def test_gpus_launch_one_only_point_process_per_gpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", "exps")  # relative: the workers run in the repository
    launched, envs = [], []

    class Popen:
        def __init__(self, cmd, cwd=None, env=None, stdout=None, stderr=None):
            launched.append(cmd)
            envs.append(env)

        def poll(self):
            return 0

    monkeypatch.setattr(sweep_mod.subprocess, "Popen", Popen)
    argv = ["--config_file", tiny_config(tmp_path / "c2.json", 2), "--dim", "2", "--param", "reg_param",
            "--values", "0.01", "0.1", "1", "--gpus", "2", "3"]
    assert sweep_main(argv) == 0
    assert [cmd[1:] for cmd in launched] == [
        [str(xp.REPO_ROOT / "sweep.py"), "--dim", "2", "--sweep", "1", "--only_point", str(k), "--gpu_num", str(g)]
        for k, g in ((0, 2), (1, 3), (2, 2))]
    assert (sweep_dir(2, 1) / "logs" / "point0.log").is_file()
    assert {env["FNOREG_EXPERIMENTS_DIR"] for env in envs} == {str(tmp_path.resolve() / "exps")}


def test_coordinate_plot_has_one_panel_per_stage(tmp_path):
    import matplotlib.image

    sweep = {"dim": 3, "sweep": 1, "params": ["seg_param"], "points": [{"index": k, "params": {"seg_param": g}}
                                                                       for k, g in enumerate(STAGE2)]}
    records = {k: {"status": "done", "exp_num": k + 1, "metrics": {"dice_mean": d, "dice_std": 0.01,
               "folding_percent_mean": f, "folding_percent_std": 0.1}} for k, (d, f) in enumerate(STAGE2.values())}
    rows = result_rows(sweep, records)
    path = save_coordinate_plot(tmp_path / "c.png", [(sweep, rows, choose_best(rows)), (sweep, rows, None)])
    height, width = matplotlib.image.imread(path).shape[:2]
    assert width > 1.8 * height  # two panels side by side


def test_sweep_lines_join_the_points_in_axis_order():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(1, (0.70, 3.0)), (0.001, (0.72, 0.1)), (0.1, (0.75, 0.6))]  # --values 1 0.001 0.1
    sweep = {"dim": 3, "sweep": 1, "params": ["seg_param"]}
    fig, ax = plt.subplots()
    draw_sweep(ax, sweep, rows_of(*points), None)
    lines = [line for a in fig.axes for line in a.get_lines() if len(line.get_xdata()) == 3]
    dice = [line for line in lines if sorted(line.get_ydata()) == [0.70, 0.72, 0.75]]
    folding = [line for line in lines if sorted(line.get_ydata()) == [0.1, 0.6, 3.0]]
    assert dice and folding
    for line in dice + folding:
        assert list(line.get_xdata()) == [0.001, 0.1, 1]
    assert list(dice[0].get_ydata()) == [0.72, 0.75, 0.70]
    plt.close(fig)


def test_the_same_grid_finds_its_sweep_and_another_grid_or_edited_config_does_not(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "exps"))
    config = tiny_config(tmp_path / "c2.json", 2)
    argv = ["--config_file", config, "--dim", "2", "--param", "reg_param", "--values", "0.01", "0.1", "--print_commands"]
    for _ in range(2):
        assert sweep_main(argv) == 0
    assert list_sweeps(2) == [1] and "continuing sweep 2d/1 (same config and grid)" in capsys.readouterr().err
    assert sweep_main(argv[:-1] + ["1", "--print_commands"]) == 0  # one more value
    assert sweep_main(argv + ["--set", "lr=0.01"]) == 0  # another override
    (tmp_path / "c2.json").write_text((tmp_path / "c2.json").read_text().replace('"epochs": 1', '"epochs": 2'))
    assert sweep_main(argv) == 0  # the base config was edited
    assert list_sweeps(2) == [1, 2, 3, 4]
    assert sweep_main(argv + ["--new"]) == 0 and list_sweeps(2) == [1, 2, 3, 4, 5]
