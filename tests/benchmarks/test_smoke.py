"""Smoke versions of the benchmarks: tiny sizes, one repeat, a two-step resolution study.

They check that each benchmark runs end to end and writes its JSON, markdown (and plot), not any
figure: benchmarks are scripts that report numbers, not timed tests. The settings are
``benchmarks/run_all.py --quick``'s.
"""

import json
import math
import os
import sys
import types

import numpy as np
import pytest

from benchmarks import bench_memory, bench_resolution, bench_speed, common, speed_report
from benchmarks.run_all import quick_args


@pytest.fixture(autouse=True)
def restore_threads():
    """The smoke runs use one thread (fast and steady on a loaded machine); the suite gets its own back."""
    threads = common.torch.get_num_threads()
    yield
    common.torch.set_num_threads(threads)


def test_speed_smoke(tmp_path):
    result = bench_speed.main(quick_args("speed", [-1], tmp_path, 1))
    data = json.loads((tmp_path / "speed.json").read_text())
    assert data["machine"]["cpu"] and data["machine"]["torch_threads"] >= 1
    cells = {(c["label"], c["size"], c["mode"]): c for c in data["cells"]}
    ref = cells[("voxelmorph/vxm2", "16x32", "inference")]
    assert ref["status"] == "ok" and ref["ratio_to_vxm2"] == pytest.approx(1.0)
    train = cells[("fouriernet/c16", "16x16x16", "training")]
    assert train["status"] == "ok" and train["batch"] == 1 and train["saved_bytes"] > 0  # 3D config: batch 1
    assert cells[("fouriernet/c16", "16x32", "training")]["batch"] == 8
    assert all(c["ratio_to_vxm2"] > 0 for c in data["cells"] if c["status"] == "ok")
    md = (tmp_path / "speed.md").read_text()
    assert "Inference" in md and "Training" in md and data["machine"]["cpu"] in md
    assert (tmp_path / "speed_scaling.png").stat().st_size > 0
    assert result["scaling_exponents"] == {}  # one size per dimension: nothing to fit, and 2D and 3D never mix
    assert not (tmp_path / "speed.partial.json").exists()  # the run's own outputs replace it
    if sys.platform.startswith("linux"):
        assert train["peak_growth_bytes"] >= 0


def test_scaling_exponents_fit_each_dimension_apart():
    def cell(dim, pixels, seconds):
        return {"status": "ok", "device": "cpu", "label": "m", "mode": "inference", "dim": dim, "pixels": pixels,
                "seconds_per_pair": seconds}
    # Linear in 2D, quadratic in 3D, and 3D much slower per pixel: one line through all four would say neither.
    cells = [cell(2, 100, 1.0), cell(2, 400, 4.0), cell(3, 1000, 100.0), cell(3, 8000, 6400.0)]
    slopes = speed_report.scaling_exponents(cells)["cpu"]
    assert slopes["m (2D)"]["inference"] == pytest.approx(1.0) and slopes["m (3D)"]["inference"] == pytest.approx(2.0)


def test_speed_cuda_graphs_flag_leaves_the_cpu_eager():
    entries = common.parse_models(["fnoreg/small"], add_reference=False)
    cells = bench_speed.bench(entries, [("16x32", (16, 32))], [bench_speed.torch.device("cpu")], 1, 5,
                              modes=("inference",), progress=False, cuda_graphs=True)
    assert cells[0]["status"] == "ok" and "graph_replays" not in cells[0]
    assert "(eager)" not in speed_report._cell_text(cells[0])


def test_speed_mixed_precision_times_training_under_autocast_and_says_so(monkeypatch):
    seen = []
    original = bench_speed.torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        if self.training and isinstance(self, bench_speed.torch.nn.Conv2d):
            seen.append(bench_speed.torch.is_autocast_enabled("cpu"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(bench_speed.torch.nn.Module, "__call__", spy)
    entries = common.parse_models(["voxelmorph/vxm2"], add_reference=False)
    cells = bench_speed.bench(entries, [("16x32", (16, 32))], [bench_speed.torch.device("cpu")], 1, 5,
                              progress=False, mixed_precision="bfloat16")
    assert [c["status"] for c in cells] == ["ok", "ok"] and seen and all(seen)  # training cells only autocast
    text = speed_report.markdown({"machine": common.machine_info(bench_speed.torch.device("cpu")), "command": "c",
                                  "settings": {"mixed_precision": "bfloat16"}, "cells": cells})
    assert "mixed precision" in text


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_speed_table_marks_a_cell_whose_graph_was_not_used(mode):
    cell = {"status": "ok", "approx": False, "mode": mode, "seconds_per_pair": 0.01, "pairs_per_s": 100.0,
            "batch": 8, "graph_eager": "host synchronisation: aten::copy_ (cpu, cuda:0)"}
    assert speed_report._cell_text(cell).endswith("(eager)")
    assert not speed_report._cell_text(dict(cell, graph_eager=None)).endswith("(eager)")


def test_speed_cells_start_from_the_built_weights(monkeypatch):
    """A training cell's steps must not carry into the next cell (they made FNOReg fold, and the
    next inference cell timed the fold repair)."""
    seen = []
    measure = bench_speed._measure

    def recording(entry, model, *args, **kwargs):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return measure(entry, model, *args, **kwargs)

    monkeypatch.setattr(bench_speed, "_measure", recording)
    entries = common.parse_models(["voxelmorph/vxm2"], add_reference=False)
    cells = bench_speed.bench(entries, [("16x16", (16, 16)), ("16x32", (16, 32))], [bench_speed.torch.device("cpu")],
                              1, 5, modes=("training", "inference"), progress=False)
    assert [c["status"] for c in cells] == ["ok"] * 4 and len(seen) == 4
    for state in seen[1:]:
        assert all(bench_speed.torch.equal(a, b) for a, b in zip(seen[0].values(), state.values()))


def test_speed_skips_what_cannot_run():
    entries = common.parse_models(["transmorph/base"], add_reference=False)
    cells = bench_speed.bench(entries, [("16x16", (16, 16))], [bench_speed.torch.device("cpu")], 1, 5,
                              modes=("inference",), progress=False)
    assert cells[0]["status"] == "skipped" and "multiple of 32" in cells[0]["reason"]
    # A cell whose time extrapolated from a smaller size exceeds the budget is skipped, not run.
    skipped = bench_speed._measure(None, None, 2, (160, 192), bench_speed.torch.device("cpu"), "inference", 1, 1.0,
                                   (16 * 16, 0.5, None, None))
    assert skipped["status"] == "skipped" and "--max_seconds" in skipped["reason"]


def test_speed_memory_check_extrapolates_the_measured_peak_growth(monkeypatch):
    """A CPU training cell is skipped when the resident growth of the smaller size, scaled by the
    pixel count, would not fit, even where the bytes autograd saved would."""
    entry = common.parse_models(["voxelmorph/vxm2"])[0]
    model = common.build(entry, 2, bench_speed.torch.device("cpu"))
    param_bytes = bench_speed._param_bytes(model)
    monkeypatch.setattr(bench_speed, "available_memory_bytes", lambda: 10 * 2**30)
    gib = 2**30
    # 1 GiB grown at 16x16 beyond the weights' fixed share -> 100 GiB at 160x160; saved bytes alone: 10 MiB.
    previous = (16 * 16, 0.01, 2**20, gib + 4 * param_bytes)
    skipped = bench_speed._measure(entry, model, 2, (160, 160), bench_speed.torch.device("cpu"), "training", 1, None,
                                   previous)
    assert skipped["status"] == "skipped" and "needs" in skipped["reason"]
    assert skipped["predicted_bytes"] == pytest.approx(100 * gib + 4 * param_bytes)
    assert bench_speed._memory_need((16 * 16, 0.01, 2**20, None), 160 * 160, 0) == pytest.approx(100 * 2**20)
    # Inference cells too, from the smaller inference cell's growth (no weights' share added).
    skipped = bench_speed._measure(entry, model, 2, (160, 160), bench_speed.torch.device("cpu"), "inference", 1, None,
                                   (16 * 16, 0.01, None, gib))
    assert skipped["status"] == "skipped" and skipped["predicted_bytes"] == pytest.approx(100 * gib)
    # No smaller size measured: three times what inference at the same size grew by.
    skipped = bench_speed._measure(entry, model, 2, (160, 160), bench_speed.torch.device("cpu"), "training", 1, None,
                                   None, inference_growth=5 * gib)
    assert skipped["status"] == "skipped" and "3x inference" in skipped["reason"]


def test_speed_keeps_the_cells_measured_before_a_run_dies(tmp_path, monkeypatch):
    """Each cell is written to speed.partial.json as it ends: a run the kernel kills for memory keeps them."""
    measure, calls = bench_speed._measure, []

    def dies_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("killed")
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench_speed, "_measure", dies_on_the_third)
    with pytest.raises(MemoryError):
        bench_speed.main(["--gpu_num", "-1", "--models", "voxelmorph/vxm2", "--sizes", "16x16", "16x32", "--repeats",
                          "1", "--threads", "1", "--no_plot", "--out", str(tmp_path)])
    kept = json.loads((tmp_path / "speed.partial.json").read_text())
    assert kept["partial"] and [c["size"] for c in kept["cells"]] == ["16x16", "16x16"]
    assert not (tmp_path / "speed.json").exists()


def test_published_configs_give_batch_sizes():
    entries = {e.label: e for e in common.parse_models(["fnoreg", "voxelmorph/vxm2"])}
    assert entries["fnoreg/small"].batch_size(2) == 8 and entries["fnoreg/3d"].batch_size(3) == 1
    assert entries["fnoreg/3d"].loss_settings(3)["seg_param"] == 0.01
    assert entries["fnoreg/small"].dims == (2,) and entries["voxelmorph/vxm2"].dims == (2, 3)
    assert common.parse_size("3d_full") == ("3d_full", (160, 192, 224))


def test_memory_smoke(tmp_path):
    bench_memory.main(quick_args("memory", [-1], tmp_path, 1))
    data = json.loads((tmp_path / "memory.json").read_text())
    (cell,) = data["cells"]
    assert cell["status"] == "ok", cell
    assert cell["peak_bytes"] >= cell["before_bytes"] > 0 and cell["step_bytes"] >= 0
    assert "Peak memory" in (tmp_path / "memory.md").read_text()


def test_memory_reports_a_failed_child():
    spec = {"device": "cpu", "label": "x", "model_name": "voxelmorph", "model_config": {"preset": "vxm2"}, "dim": 3,
            "shape": [64, 64, 64], "mode": "training", "train_config": {}, "threads": 1,
            "mem_limit_bytes": 2**28}  # 256 MiB of address space: torch cannot even load
    cell = bench_memory.run_cell(spec, timeout=600)  # a guard against a hang, not a time limit
    assert cell["status"] in ("out of memory", "error")


def test_memory_jobs_keep_order_and_remeasure_shared_oom_alone(monkeypatch):
    """Under --jobs a CUDA child gets a share of the GPU; one that runs out of it is measured alone."""
    seen = []

    def fake_run_cell(spec, timeout):
        seen.append(dict(spec))
        if spec["device"] != "cpu" and spec["shape"] == [32, 32, 32] and spec.get("cuda_fraction"):
            return {"status": "out of memory", "reason": "share"}
        return {"status": "ok", "peak_bytes": 2**20 * len(spec["shape"]), "step_bytes": 0, "before_bytes": 1}

    monkeypatch.setattr(bench_memory, "run_cell", fake_run_cell)
    entries = common.parse_models(["voxelmorph/vxm2"], [])
    sizes = [("a", (16, 16, 16)), ("b", (32, 32, 32))]
    cells = bench_memory.bench(entries, sizes, ["cuda:0"], threads=1, modes=("training",), progress=False, jobs=2)
    assert [c["size"] for c in cells] == ["a", "b"] and all(c["status"] == "ok" for c in cells)
    assert all(s["cuda_fraction"] == pytest.approx(0.475) for s in seen[:2])
    assert "cuda_fraction" not in seen[2] and seen[2]["shape"] == [32, 32, 32]  # the rerun, alone
    assert not any("shared" in c for c in cells)


def test_gpu_check_refuses_without_cuda_and_plans_existing_files(monkeypatch, tmp_path, capsys):
    from benchmarks import gpu_check

    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--out", str(tmp_path / "g")]) == 2
    assert "needs a GPU" in capsys.readouterr().err and not (tmp_path / "g").exists()
    steps = gpu_check.plan(0, tmp_path)
    assert [name for name, _ in steps] == list(gpu_check.STEPS)
    for _, commands in steps:
        for _, argv, seconds in commands:
            target = argv[0] if argv[0] != "-m" else argv[-1]
            assert (gpu_check.REPO / target).exists(), target
            assert seconds > 0
            if "--config_file" in argv:
                assert (gpu_check.REPO / "configs" / f"{argv[argv.index('--config_file') + 1]}.json").exists()


def test_gpu_check_runs_every_step_and_skips_an_evaluation_whose_training_failed(monkeypatch, tmp_path):
    from benchmarks import gpu_check

    monkeypatch.setattr(common.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(common.torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(common.torch.cuda, "get_device_name", lambda g: "fake GPU")
    ran = []

    def fake_run(label, argv, seconds, log, env):
        ran.append(label)
        assert env["FNOREG_EXPERIMENTS_DIR"] == str(tmp_path / "experiments")
        return {"step": label, "status": "failed (exit 1)" if label == "2D demo, training" else "ok"}

    monkeypatch.setattr(gpu_check, "_run", fake_run)
    assert gpu_check.main(["--out", str(tmp_path), "--skip", "graphs", "precision", "speed"]) == 1
    assert ran == ["CUDA against the CPU", "3D memory, every model", "2D demo, training",
                   "2D demo, CUDA graphs, training", "2D demo, CUDA graphs, evaluation", "3D demo, training",
                   "3D demo, evaluation"]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary[3] == {"step": "2D demo, evaluation", "status": "skipped (its training failed)"}
    ckpt = json.loads((tmp_path / "fnoreg3d_ckpt.json").read_text())
    assert ckpt["model_config"]["checkpointing"] is True


def test_gpu_check_step_reports_ok_failure_and_timeout(tmp_path):
    from benchmarks import gpu_check

    env = dict(os.environ)
    ok = gpu_check._run("ok", ["-c", "print('hello')"], 60, tmp_path / "ok.log", env)
    bad = gpu_check._run("bad", ["-c", "raise SystemExit(3)"], 60, tmp_path / "bad.log", env)
    slow = gpu_check._run("slow", ["-c", "import time; time.sleep(30)"], 1, tmp_path / "slow.log", env)
    assert ok["status"] == "ok" and "hello" in (tmp_path / "ok.log").read_text()
    assert bad["status"] == "failed (exit 3)" and slow["status"] == "timed out after 1 s"


class FakeAnts(types.ModuleType):
    """Enough of antspyx for the ANTs path: the identity registration."""

    __version__ = "fake"

    class Image:
        def __init__(self, array):
            self.array = np.asarray(array)

        def numpy(self):
            return self.array

    def from_numpy(self, array, spacing=None):
        return self.Image(array)

    def registration(self, fixed, moving, type_of_transform):
        return {"fwdtransforms": ["identity"], "invtransforms": ["identity"]}

    def create_jacobian_determinant_image(self, domain, tx):
        return self.Image(np.ones_like(domain.array))

    def apply_transforms(self, fixed, moving, transformlist, interpolator):
        return self.Image(moving.array)


def test_resolution_smoke(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ants", FakeAnts("ants"))
    result = bench_resolution.main(quick_args("resolution", [-1], tmp_path, 1))
    data = json.loads((tmp_path / "resolution.json").read_text())
    assert set(data["models"]) == {"tiny-fnoreg"}
    for model in data["models"].values():
        for train_size in ("16", "32"):
            run = model["runs"][train_size]
            assert "error" not in run, run
            assert run["config"]["train_config"]["steps_per_epoch"] == 2
            for test_size in ("16", "32"):
                s = run["eval"][test_size]
                assert 0 <= s["dice_mean"] <= 1 and s["folding_percent_mean"] >= 0 and "hd95_mean" in s
        assert math.isfinite(model["dice_drop"])
    # The identity "registration" leaves the Dice where it was before registration.
    ants = data["ants"]["SyN"]["32"]
    assert ants["dice_mean"] == pytest.approx(ants["initial_dice_mean"]) and ants["folding_percent_mean"] == 0
    md = (tmp_path / "resolution.md").read_text()
    assert "Dice drop" in md and "ANTs `SyN`" in md and "tiny-fnoreg" in md
    assert result["budget"]["batch_size"] == 2


def test_an_interrupted_run_stops_the_resolution_benchmark(tmp_path, monkeypatch, capsys):
    # Ctrl-C or SIGTERM ends the training run with status 130; the benchmark must not go on to the next.
    calls = []
    monkeypatch.setattr(bench_resolution, "train_run", lambda *args, **kw: calls.append(args) or (130, 0.1))
    with pytest.raises(SystemExit) as exc:
        bench_resolution.main(quick_args("resolution", [-1], tmp_path, 1))
    assert exc.value.code == 130 and len(calls) == 1 and "interrupted during" in capsys.readouterr().err
    assert not (tmp_path / "resolution.json").exists()


def test_resolution_summaries_found_whatever_the_folder_name(tmp_path):
    for name, size, split in (("final_80_oasis-abc123", 80, "test"), ("final_160", 160, "test"),
                              ("final_160_val", 160, "val")):
        folder = tmp_path / "eval" / name
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"eval_size": size, "split": split, "checkpoint": "final",
                                                          "dice_mean": 0.5 if split == "test" else 0.1}))
    found = bench_resolution.find_summaries(tmp_path, (80, 160))
    assert set(found) == {80, 160} and found[160]["dice_mean"] == 0.5


def test_resolution_variants_keep_the_benchmark_budget():
    runs = dict(bench_resolution.model_runs(
        ["fnoreg/small"], variants=['bl:{"model_name": "fnoreg", "model_config": {"preset": "small", "band_limit": '
                                    'true}, "train_config": {"batch_size": 99, "reg_param": 0.05}}']))
    config = bench_resolution.run_config("bl", runs["bl"], 80, bench_resolution.BUDGETS["cpu"], {}, 0)
    assert config["train_config"]["batch_size"] == 8 and config["train_config"]["reg_param"] == 0.05
    assert config["model_config"]["band_limit"] is True and config["train_config"]["size"] == 80
    shipped = json.loads((bench_resolution.CONFIG_DIR / "fnoreg_2d_small.json").read_text())
    # The published network (no fold repair, which no baseline gets), with the config file's training.
    assert runs["fnoreg/small"]["model_config"] == {"preset": "small"}
    assert runs["fnoreg/small"]["train_config"] == shipped["train_config"]
    multires = dict(bench_resolution.model_runs([], variants=[
        'mr:{"model_name": "fnoreg", "train_config": {"multires": {"min_size": 40, "max_size": 160}}}']))
    config = bench_resolution.run_config("mr", multires["mr"], 80, bench_resolution.BUDGETS["cpu"], {}, 0)
    assert "multires" not in config["train_config"]  # it would make the two training sizes one run


def test_floor_smoke(tmp_path):
    from benchmarks import bench_floor
    assert bench_floor.main(["--preset", "small", "--shape", "20", "24", "--threads", "1", "--repeats", "1",
                             "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "floor.json").read_text())
    assert data["floor_ms"] > 0 and data["ratio"] > 0 and len(data["rows"]) >= 10
    assert "floor" in (tmp_path / "floor.md").read_text()


def test_training_floor_smoke(tmp_path):
    from benchmarks import bench_floor_training
    assert bench_floor_training.main(["--shape", "20", "24", "--threads", "1", "--repeats", "1",
                                      "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "floor_training.json").read_text())
    assert data["batch"] == 8 and data["floor_ms"] > data["as_run_ms"] > 0 and data["ratio"] > 0
    parts = [r["part"] for r in data["rows"]]
    # Every part of the step is counted: the six Fourier layers, the four FFCs, the rest as run.
    assert {r["count"] for r in data["rows"] if r["part"].startswith("Fourier layer")} == {6}
    assert {r["count"] for r in data["rows"] if r["part"].startswith(("FFC forward", "FFC backward"))} == {4}
    assert any("Adam" in p for p in parts) and any("warp and loss" in p for p in parts)
    assert "pairs/s at the floor" in (tmp_path / "floor_training.md").read_text()


def test_targets_smoke(tmp_path):
    from benchmarks import bench_targets
    assert bench_targets.main(["--threads", "1", "--rounds", "2", "--repeats", "1", "--floor_repeats", "1",
                               "--train_shape", "16", "32", "--infer_shape", "32", "32", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "targets.json").read_text())
    assert len(data["targets"]) == 4 and data["floor_s"] > 0
    assert all(len(c["round_medians_s"]) == 2 for c in data["cells"])
    assert "16x32, batch 8" in (tmp_path / "targets.md").read_text()


def test_command_line_quotes_arguments_with_spaces():
    from benchmarks.common import command_line
    text = command_line("study_transfer.py", ["--variants", "published", "diffeomorphic + fold_repair"])
    assert text == "python benchmarks/study_transfer.py --variants published 'diffeomorphic + fold_repair'"
