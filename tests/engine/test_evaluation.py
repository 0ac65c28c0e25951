"""Evaluation end to end on tiny phantoms: outputs, identity model, determinism, sizes, errors (2D and 3D)."""

import csv
import json

import numpy as np
import pytest
import torch

from data.dataset import load_split
from data.phantom import write_phantom_dataset
from engine import experiment as xp
from engine.checkpoint import save_weights
from engine.config import resolve_config
from engine.evaluation import evaluate_experiment, evaluate_main, evaluation_shapes, output_folder, panel_pairs
from engine.metrics import hd95_per_label
from engine.reports import RUN_KEYS, format_table, summarize
from engine.scoring import PairMetrics
from engine.training import train_main
from models import build_model
from utils.cli import run_cli
from utils.errors import UserError
from utils.fileio import write_json

SUMMARY_KEYS = {"n_pairs", "eval_size", "initial_dice_mean", "dice_mean", "dice_std", "folding_percent_mean",
                "folding_percent_std", "sdlogj_mean", "hd95_mean", "time_per_pair_s", "n_params", "model_config", "checkpoint",
                "train_size", "split", "device", "n_pairs_with_labels", "n_pairs_without_labels"}
PER_PAIR = ["pair", "moving", "fixed", "has_labels", "initial_dice", "dice", "folding_percent", "sdlogj", "hd95",
            "time_s"]
MODEL = {2: {"hidden_channels": 4, "projection_channels": 8, "n_layers": 1, "n_modes": [8, 8]},
         3: {"hidden_channels": 3, "projection_channels": 6, "n_layers": 1, "n_modes": [6, 6, 6]}}
TRAIN = {"lr": 1e-3, "batch_size": 2, "epochs": 1, "steps_per_epoch": 2, "ckpt_freq": 1, "image_log_freq": 1,
         "seed": 3}
PHANTOM = {
    2: {"dataset": "phantom", "phantom": {"n_subjects": 9, "shape": [32, 40], "seed": 0},
        "splits": {"train": [0, 3], "val": [4, 5], "test": [6, 8]}},
    3: {"dataset": "phantom", "phantom": {"n_subjects": 7, "shape": [24, 28, 32], "seed": 0},
        "splits": {"train": [0, 2], "val": [3, 4], "test": [4, 6]}},
}


@pytest.fixture(scope="module")
def exp_root(tmp_path_factory):
    """An experiments root for the module: experiment 1 of each dimension, trained for two steps and
    evaluated once with the default flags (``default_eval`` reads those outputs)."""
    root = tmp_path_factory.mktemp("experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
        for dim in (2, 3):
            cfg = {"description": f"tiny {dim}D", "model_name": "fnoreg", "model_config": MODEL[dim],
                   "train_config": TRAIN, "data_config": PHANTOM[dim]}
            path = root / f"tiny_{dim}d.json"
            path.write_text(json.dumps(cfg))
            assert train_main(dim, ["--config_file", str(path), "--gpu_num", "-1"]) == 0
            evaluate_experiment(dim, 1, gpu_num=-1, progress=False, n_panels=2)
        yield root


def default_eval(root, dim):
    return root / f"{dim}d" / "exp1" / "eval" / f"final_{min(PHANTOM[dim]['phantom']['shape'])}"


def evaluate(dim, *argv):
    return run_cli(lambda a: evaluate_main(dim, a), ["--gpu_num", "-1", *argv])


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def metrics_only(summary):
    return {k: v for k, v in summary.items() if k not in RUN_KEYS}


def save_untrained_experiment(dim, data_config, seed=0, with_config=False):
    """An experiment folder holding a freshly built (zero-head, identity) model as its final weights
    (``with_config``: carrying the config, as training writes them since 2026-11-30)."""
    config = resolve_config({"model_name": "fnoreg", "model_config": MODEL[dim], "train_config": TRAIN,
                             "data_config": data_config}, dim)
    exp_num, folder = xp.create_experiment(dim)
    write_json(folder / "config.json", config)
    torch.manual_seed(seed)
    model = build_model("fnoreg", config["model_config"], dim)
    save_weights(folder, model, 0, data_config.get("phantom", {}).get("shape", [32, 40]),
                 config if with_config else None)
    return exp_num, folder


def check_outputs(folder, n_labels):
    summary = json.loads((folder / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    pairs = read_csv(folder / "per_pair.csv")
    assert list(pairs[0]) == PER_PAIR and len(pairs) == summary["n_pairs"] > 0
    labels = read_csv(folder / "per_label.csv")
    assert len(labels) == n_labels and labels[0]["name"]
    assert (folder / "dice_boxplot.png").stat().st_size > 0
    assert (folder / "panel_pair0.png").stat().st_size > 0
    for row in pairs:
        assert float(row["time_s"]) > 0 and 0 <= float(row["folding_percent"]) <= 100
    return summary, pairs


@pytest.mark.parametrize("dim", [2, 3])
def test_trained_model_end_to_end(exp_root, dim):
    folder = default_eval(exp_root, dim)
    summary, pairs = check_outputs(folder, len(read_csv(folder / "per_label.csv")))
    assert 0 < summary["n_labels"] <= {2: 24, 3: 35}[dim]  # the phantom draws a subset of seg24 / seg35
    assert summary["checkpoint"] == "final" and summary["split"] == "test" and summary["device"] == "cpu"
    assert summary["eval_shape"] == PHANTOM[dim]["phantom"]["shape"] == summary["train_size"]
    assert summary["n_pairs"] == (4 if dim == 2 else 2)  # consecutive pairs: both directions in 2D, one in 3D
    assert 0 < summary["initial_dice_mean"] < 1 and 0 < summary["dice_mean"] < 1 and summary["n_params"] > 0
    assert summary["dice_mean"] == pytest.approx(np.mean([float(r["dice"]) for r in pairs]))
    last = len(pairs) - 1
    assert sorted(p.name for p in folder.glob("panel_pair*.png")) == ["panel_pair0.png", f"panel_pair{last}.png"]


def test_same_checkpoint_twice_gives_identical_metrics(exp_root, capsys):
    folder = default_eval(exp_root, 2)
    first = (json.loads((folder / "summary.json").read_text()), read_csv(folder / "per_pair.csv"),
             (folder / "per_label.csv").read_text())
    assert evaluate(2, "--exp_num", "1", "--n_panels", "2") == 0
    second = (json.loads((folder / "summary.json").read_text()), read_csv(folder / "per_pair.csv"),
              (folder / "per_label.csv").read_text())
    assert metrics_only(first[0]) == metrics_only(second[0])
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in first[1]] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in second[1]]
    assert first[2] == second[2]
    assert len(list(folder.glob("panel_pair*.png"))) == 2
    out = capsys.readouterr().out
    assert "Dice before" in out and f"{second[0]['dice_mean']:.4f}" in out


def test_cuda_graphs_flag_on_the_cpu_is_a_notice_and_changes_nothing(exp_root, capsys):
    folder = default_eval(exp_root, 2)
    plain = json.loads((folder / "summary.json").read_text())
    assert plain["cuda_graphs"] is False
    assert evaluate(2, "--exp_num", "1", "--n_panels", "2", "--cuda_graphs") == 0
    assert "--cuda_graphs has no effect on the CPU" in capsys.readouterr().err
    graphed = json.loads((folder / "summary.json").read_text())
    assert graphed["cuda_graphs"] is False and metrics_only(graphed) == metrics_only(plain)


def test_evaluation_through_the_graph_bookkeeping_gives_the_eager_metrics(exp_root, monkeypatch, capsys):
    """The whole evaluation with --cuda_graphs, the CUDA capture replaced by a stand-in (the rest,
    signatures per batch size, copies and the session's lifetime, is the real code)."""
    import engine.evaluation
    from tests.utils.test_cuda_graphs import CpuGraphCache
    from utils.cuda_graphs import GraphCache

    assert evaluate(2, "--exp_num", "1", "--n_panels", "2", "--batch_size", "3") == 0
    plain = read_csv(default_eval(exp_root, 2) / "per_pair.csv")
    recorded = []
    for name in ("_eligible", "_warm_up_stream", "_synchronize"):
        monkeypatch.setattr(GraphCache, name, staticmethod(getattr(CpuGraphCache, name)))
    monkeypatch.setattr(GraphCache, "_record", lambda self, static: recorded.append(1) or CpuGraphCache._record(
        CpuGraphCache(self.fn), static))
    monkeypatch.setattr(engine.evaluation, "cuda_graphs_on", lambda requested, device: bool(requested))
    assert evaluate(2, "--exp_num", "1", "--n_panels", "2", "--batch_size", "3", "--cuda_graphs") == 0
    graphed = read_csv(default_eval(exp_root, 2) / "per_pair.csv")
    summary = json.loads((default_eval(exp_root, 2) / "summary.json").read_text())
    assert summary["cuda_graphs"] is True
    assert len(recorded) == 2  # four pairs in batches of 3 and 1: two signatures, each captured once
    assert summary["cuda_graph_use"] == {"replays": 4, "eager": []}  # two warm-up calls and two batches
    assert [{k: v for k, v in r.items() if k != "time_s"} for r in graphed] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in plain]


def test_several_sizes_give_one_folder_each(exp_root, capsys):
    assert evaluate(2, "--exp_num", "1", "--size", "16", "24", "--n_panels", "1", "--batch_size", "3") == 0
    eval_dir = exp_root / "2d" / "exp1" / "eval"
    small = json.loads((eval_dir / "final_16" / "summary.json").read_text())
    mid = json.loads((eval_dir / "final_24" / "summary.json").read_text())
    assert small["eval_shape"] == [16, 20] and mid["eval_shape"] == [24, 30] and mid["batch_size"] == 3
    assert small["train_size"] == [32, 40] and small["full_shape"] == [32, 40]
    assert sorted(p.name for p in (eval_dir / "final_16").glob("panel_pair*.png")) == ["panel_pair0.png"]
    table = capsys.readouterr().out.splitlines()
    assert any(line.startswith("16 ") and "16x20" in line for line in table)
    assert any(line.startswith("24 ") and "24x30" in line for line in table)


def test_checkpoint_and_validation_split(exp_root):
    assert evaluate(2, "--exp_num", "1", "--ckpt_epoch", "1", "--split", "val", "--n_panels", "0") == 0
    folder = output_folder(exp_root / "2d" / "exp1", "epoch1", 32, "val")
    assert folder.name == "epoch1_32_val"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["checkpoint"] == "epoch1" and summary["split"] == "val" and summary["epoch"] == 1
    assert not list(folder.glob("panel_pair*.png"))
    assert evaluate(2, "--exp_num", "1", "--ckpt_epoch", "1", "--split", "val", "--n_panels", "1") == 0
    assert len(list(folder.glob("panel_pair*.png"))) == 1


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("notice:")]
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_errors_are_one_line(exp_root, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate(2, "--exp_num", "9")
    assert exc.value.code == 2
    assert "experiment 9 not found" in (line := one_error_line(capsys)) and "existing 2D experiments: 1" in line
    with pytest.raises(SystemExit) as exc:
        evaluate(2, "--exp_num", "1", "--ckpt_epoch", "7")
    assert exc.value.code == 2
    assert "existing checkpoint epochs: 1" in one_error_line(capsys)
    with pytest.raises(SystemExit) as exc:
        evaluate(2, "--exp_num", "1", "--batch_size", "0")
    assert exc.value.code == 2 and "--batch_size" in one_error_line(capsys)


def test_identity_model_equals_initial_metrics_and_unlabelled_pairs(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    root = write_phantom_dataset(tmp_path / "oasis", 2, 4, shape=[32, 40], seed=2)
    (root / "PHANTOM_s2_0003" / "slice_seg24.nii.gz").unlink()  # subject 3 has no label map
    data_config = {"dataset": "oasis", "root": str(root), "splits": {"train": None, "val": None, "test": [0, 3]}}
    exp_num, folder = save_untrained_experiment(2, data_config)
    (summary,) = evaluate_experiment(2, exp_num, gpu_num=-1, progress=False, n_panels=1)
    assert summary["n_pairs"] == 6 and summary["n_pairs_without_labels"] == 2 and summary["n_pairs_with_labels"] == 4
    assert summary["dice_mean"] == summary["initial_dice_mean"] and summary["dice_std"] == summary["initial_dice_std"]
    assert summary["folding_percent_mean"] == 0 and summary["sdlogj_mean"] == 0
    # HD95 after an identity registration is the HD95 between the unregistered label maps.
    split = load_split(resolve_config(json.loads((folder / "config.json").read_text()), 2)["data_config"], 2, "test")
    labelled = [(m, f) for m, f in split.pairs.tolist() if split.has_labels[m] and split.has_labels[f]]
    direct = [np.nanmean(hd95_per_label(split.labels[m : m + 1].long(), split.labels[f : f + 1].long(),
                                        split.label_ids)) for m, f in labelled]
    assert summary["hd95_mean"] == pytest.approx(np.mean(direct), rel=1e-12)
    out = folder / "eval" / "final_32"
    pairs = read_csv(out / "per_pair.csv")
    unlabelled = [r for r in pairs if r["has_labels"] == "0"]
    assert {(r["moving"], r["fixed"]) for r in unlabelled} == {("PHANTOM_s2_0002", "PHANTOM_s2_0003"),
                                                             ("PHANTOM_s2_0003", "PHANTOM_s2_0002")}
    assert all(r["dice"] == "nan" and r["hd95"] == "nan" and float(r["sdlogj"]) == 0 for r in unlabelled)
    labelled = [r for r in pairs if r["has_labels"] == "1"]
    assert all(r["dice"] == r["initial_dice"] for r in labelled)
    assert summary["dice_mean"] == pytest.approx(np.mean([float(r["dice"]) for r in labelled]))
    for row in read_csv(out / "per_label.csv"):
        assert row["dice_mean"] == row["initial_dice_mean"]


def test_identity_model_3d(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    data_config = {"dataset": "phantom", "phantom": {"n_subjects": 3, "shape": [20, 24, 28], "seed": 1},
                   "splits": {"train": None, "val": None, "test": [0, 2]}}
    exp_num, folder = save_untrained_experiment(3, data_config)
    (summary,) = evaluate_experiment(3, exp_num, gpu_num=-1, progress=False, n_panels=1)
    assert summary["n_pairs"] == 2 and summary["dice_mean"] == summary["initial_dice_mean"] < 1
    assert summary["folding_percent_mean"] == 0 and summary["sdlogj_mean"] == 0 and summary["hd95_mean"] > 0
    assert (folder / "eval" / "final_20" / "panel_pair0.png").is_file()


def test_missing_split_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, _ = save_untrained_experiment(2, {"dataset": "phantom", "phantom": {"n_subjects": 6, "shape": [32, 40]},
                                               "splits": {"train": [0, 3], "val": [4, 5], "test": None}})
    with pytest.raises(UserError, match="has no test split.*--split"):
        evaluate_experiment(2, exp_num, gpu_num=-1, progress=False)


def test_helpers():
    assert evaluation_shapes(None, (160, 192)) == [(160, (160, 192))]
    assert evaluation_shapes([80, 160, 80], (160, 192, 224)) == [(80, (80, 96, 112)), (160, (160, 192, 224))]
    assert panel_pairs(400, 3) == [0, 200, 399] and panel_pairs(2, 3) == [0, 1] and panel_pairs(5, 0) == []
    scores = PairMetrics.pair_score(np.array([[0.5, np.nan, 1.0], [np.nan, np.nan, np.nan]]))
    assert scores[0] == 0.75 and np.isnan(scores[1])
    row = {"eval_size": 80, "eval_shape": [80, 96], "n_pairs": 400, "initial_dice_mean": 0.54, "dice_mean": 0.765,
           "dice_std": 0.03, "folding_percent_mean": 0.8, "folding_percent_std": 0.2, "sdlogj_mean": 0.1,
           "hd95_mean": None, "time_per_pair_s": 0.004}
    table = format_table([row])
    assert "0.7650 ± 0.0300" in table and "n/a" in table and "4.00" in table


def test_summary_statistics_skip_the_same_pairs():
    # Pair 1 is labelled but has no label of the list in either map: no Dice, no HD95.
    nan = np.nan
    dice = np.array([[0.8, 0.6], [nan, nan], [0.5, 0.9], [0.2, nan]])
    metrics = PairMetrics(dice_before=dice - 0.1, dice_after=dice, hd95=np.array([[2.0, 3.0], [nan, nan], [1.0, 1.0],
                                                                                   [4.0, 9.0]]),
                          folding=np.zeros(4), sdlogj=np.zeros(4), time_s=np.ones(4),
                          labelled=np.array([True, True, True, False]), hd95_one_sided=np.array([0, 0, 1, 5]))
    s = summarize(metrics, [1, 2])
    assert s["dice_mean"] == pytest.approx(0.7) and s["dice_median"] == pytest.approx(0.7)  # pairs 0 and 2
    assert s["hd95_mean"] == pytest.approx(1.75) and s["hd95_one_sided_labels"] == 1  # unlabelled pair 3 left out
    json.dumps(s, allow_nan=False)  # valid JSON: no NaN anywhere


def test_a_diverged_field_is_counted_not_dropped():
    # Pair 1's field was NaN (a diverged model): folded everywhere, SDlogJ undefined (test_metrics).
    metrics = PairMetrics(dice_before=np.zeros((2, 1)), dice_after=np.zeros((2, 1)), hd95=np.zeros((2, 1)),
                          folding=np.array([0.0, 100.0]), sdlogj=np.array([0.0, np.nan]), time_s=np.ones(2),
                          labelled=np.array([True, True]), hd95_one_sided=None)
    s = summarize(metrics, [1])
    assert s["n_pairs_nonfinite_field"] == 1 and s["folding_percent_mean"] == 50.0
    assert s["sdlogj_mean"] is None and s["sdlogj_std"] is None  # not the healthy pair's 0 alone
    json.dumps(s, allow_nan=False)


# --------------------------------------------------------------------- issue 8: items 3, 4 and 8
def spectral_layers(model):
    from models.spectral import SpectralConv

    return [m for m in model.modules() if isinstance(m, SpectralConv)]


def test_register_split_uses_the_weight_cache_and_frees_it(monkeypatch):
    from engine.batches import DeviceSplit
    from engine.scoring import register_split
    from models.spectral import SpectralConv

    split = load_split(resolve_config({"model_name": "fnoreg", "model_config": MODEL[2], "data_config": PHANTOM[2]}, 2)["data_config"],
                       2,
                       "test")
    model = build_model("fnoreg", MODEL[2], 2).eval()
    rebuilds = []
    original = SpectralConv._build_weight
    monkeypatch.setattr(SpectralConv, "_build_weight", lambda self, *a: rebuilds.append(self) or original(self, *a))
    register_split(model, DeviceSplit(split, split.shape, "cpu"), split.label_ids, 1, progress=False)
    layers = spectral_layers(model)
    # Four pairs, one at a time, plus a warm-up: each layer rebuilt its weight once, not once per pass.
    assert len(rebuilds) == len(layers) > 0
    assert all(layer._cache is None and not layer._cache_enabled for layer in layers)


def test_field_on_grid_keeps_a_linear_field_exactly():
    from engine.scoring import field_on_grid

    def linear(shape):
        grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, n, dtype=torch.float64) for n in shape],
                                          indexing="ij"))
        return (0.1 * grid + 0.05 * grid.flip(0) + 0.02)[None]  # normalised units, any resolution

    assert torch.allclose(field_on_grid(linear((8, 10)), (32, 40)), linear((32, 40)), atol=1e-12)
    assert torch.allclose(field_on_grid(linear((5, 6, 7)), (20, 24, 28)), linear((20, 24, 28)), atol=1e-12)


def test_native_scoring_compares_the_same_labels_at_every_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2])  # the identity registration
    assert evaluate(2, "--exp_num", str(exp_num), "--size", "8", "32", "--n_panels", "0") == 0
    out = capsys.readouterr().out
    assert "scored on" in out and "native 32x40" in out and "native 32x40 label maps" in out
    native8, native32 = (json.loads((folder / "eval" / f"final_{s}" / "summary.json").read_text()) for s in (8, 32))
    assert native8["score_on"] == "native" and native8["label_shape"] == [32, 40] == native8["full_shape"]
    # Same label maps at both sizes: the initial Dice is identical, and an identity field scores it again.
    assert native8["initial_dice_mean"] == native32["initial_dice_mean"] == native8["dice_mean"]
    assert native8["hd95_mean"] == pytest.approx(native32["hd95_mean"], rel=1e-12)
    # Folding and SDlogJ stay on the evaluation grid.
    assert native8["eval_shape"] == [8, 10]

    # A structure in one subject's map only (the identity moves none): the same count at every size.
    assert native8["hd95_one_sided_labels"] == native32["hd95_one_sided_labels"] > 0
    assert f"{native8['hd95_one_sided_labels']} at size 8" in out

    assert evaluate(2, "--exp_num", str(exp_num), "--size", "8", "--n_panels", "0", "--score_on", "eval") == 0
    out = capsys.readouterr().out
    assert "eval 8x10" in out
    sub = json.loads((folder / "eval" / "final_8_evalgrid" / "summary.json").read_text())
    # Small structures also vanish from some 8x10 maps: more labels get the diagonal, and the table says so.
    assert sub["hd95_one_sided_labels"] > native8["hd95_one_sided_labels"]
    assert f"{sub['hd95_one_sided_labels']} at size 8" in out
    assert sub["score_on"] == "eval" and sub["label_shape"] == [8, 10]
    assert sub["initial_dice_mean"] != native8["initial_dice_mean"]  # subsampled maps: another label set
    # The native folder was not replaced by the published-way evaluation.
    assert json.loads((folder / "eval" / "final_8" / "summary.json").read_text())["score_on"] == "native"


def test_config_file_evaluates_other_data_into_a_folder_named_by_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2])
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0") == 0
    own = (folder / "eval" / "final_32" / "summary.json").read_text()

    # The same subjects written in the OASIS layout elsewhere: a moved dataset.
    root = write_phantom_dataset(tmp_path / "moved" / "oasis-copy", 2, 9, shape=[32, 40], seed=0)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model_name": "fnoreg", "model_config": MODEL[2], "data_config": {
        "dataset": "oasis", "root": str(root), "splits": PHANTOM[2]["splits"]}}))
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0", "--config_file", str(other)) == 0
    captured = capsys.readouterr()
    assert f"data_config of {other}" in captured.err and f"at {root}" in captured.out
    (tagged,) = [p for p in (folder / "eval").iterdir() if p.name.startswith("final_32_oasis-copy-")]
    summary = json.loads((tagged / "summary.json").read_text())
    assert summary["data_root"] == str(root) and summary["config_file"] == str(other)
    assert summary["data_config"]["root"] == str(root) and summary["data_tag"] == tagged.name[len("final_32_"):]
    assert (folder / "eval" / "final_32" / "summary.json").read_text() == own  # never overwritten
    assert json.loads(own)["data_tag"] is None and json.loads(own)["data_config"]["dataset"] == "phantom"

    # A config holding the experiment's own data evaluates into the usual folder.
    same = tmp_path / "same.json"
    same.write_text(json.dumps({"model_name": "fnoreg", "model_config": MODEL[2], "data_config": PHANTOM[2]}))
    (s,) = evaluate_experiment(2, exp_num, gpu_num=-1, progress=False, n_panels=0, config_file=str(same))
    assert s["data_tag"] is None and len(list((folder / "eval").iterdir())) == 2


def test_config_file_whose_split_holds_training_subjects_is_flagged(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2])  # trained on subjects 0-3
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0") == 0
    assert "not held out" not in capsys.readouterr().err
    own = json.loads((folder / "eval" / "final_32" / "summary.json").read_text())
    assert own["training_subjects_in_split"] == 0

    # The same phantom with other split ranges: its test split starts inside the training split.
    data = {**PHANTOM[2], "splits": {"train": [5, 8], "val": [0, 1], "test": [2, 4]}}
    other = tmp_path / "resplit.json"
    other.write_text(json.dumps({"model_name": "fnoreg", "model_config": MODEL[2], "data_config": data}))
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0", "--config_file", str(other)) == 0
    captured = capsys.readouterr()
    assert "2 subject(s) of the test split are training subjects" in captured.err
    assert "not held out" in captured.out  # under the printed table too
    (tagged,) = [p for p in (folder / "eval").iterdir() if p.name.startswith("final_32_phantom-")]
    assert json.loads((tagged / "summary.json").read_text())["training_subjects_in_split"] == 2


def test_an_edited_config_json_is_checked_against_the_weights_own_config(tmp_path, monkeypatch, capsys):
    # config.json edited after training (a restart would train on it): its new test split holds
    # subjects the weights were trained on, which the edited train split no longer lists.
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2], with_config=True)  # trained on 0-3
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0") == 0
    assert "changed after" not in capsys.readouterr().err
    own = (folder / "eval" / "final_32" / "summary.json").read_text()
    assert json.loads(own)["data_config_edited_since_training"] == []

    config = json.loads((folder / "config.json").read_text())
    config["data_config"]["splits"] = {"train": [5, 8], "val": [0, 1], "test": [2, 4]}
    write_json(folder / "config.json", config)
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0") == 0
    err = capsys.readouterr().err
    assert "data_config.splits in" in err and "changed after" in err
    assert "2 subject(s) of the test split are training subjects" in err
    (tagged,) = [p for p in (folder / "eval").iterdir() if p.name.startswith("final_32_phantom-")]
    summary = json.loads((tagged / "summary.json").read_text())
    assert summary["data_config_edited_since_training"] == ["splits"] and summary["training_subjects_in_split"] == 2
    assert (folder / "eval" / "final_32" / "summary.json").read_text() == own  # the trained split's results kept

    # Weights written before they carried their config: config.json's is all there is.
    exp_old, folder_old = save_untrained_experiment(2, PHANTOM[2])
    (s,) = evaluate_experiment(2, exp_old, gpu_num=-1, progress=False, n_panels=0)
    assert s["data_config_edited_since_training"] is None and s["training_subjects_in_split"] == 0


def test_data_that_moved_is_not_an_edit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    root = write_phantom_dataset(tmp_path / "old", 2, 9, shape=[32, 40], seed=0)
    data = {"dataset": "oasis", "root": str(root), "splits": PHANTOM[2]["splits"]}
    exp_num, folder = save_untrained_experiment(2, data, with_config=True)
    root.rename(tmp_path / "new")
    config = json.loads((folder / "config.json").read_text())
    config["data_config"]["root"] = str(tmp_path / "new")
    write_json(folder / "config.json", config)
    (s,) = evaluate_experiment(2, exp_num, gpu_num=-1, progress=False, n_panels=0)
    assert "changed after" not in capsys.readouterr().err
    assert s["data_config_edited_since_training"] == [] and s["training_subjects_in_split"] == 0
    assert [p.name for p in (folder / "eval").iterdir()] == ["final_32"]


def test_refine_uses_the_loss_the_weights_were_trained_with(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2], with_config=True)
    config = json.loads((folder / "config.json").read_text())
    trained_reg = config["train_config"]["reg_param"]
    config["train_config"]["reg_param"] = trained_reg * 10 + 1  # edited after training
    write_json(folder / "config.json", config)
    (s,) = evaluate_experiment(2, exp_num, sizes=[16], gpu_num=-1, progress=False, n_panels=0, refine=1)
    assert s["refine_loss"]["reg_param"] == trained_reg and s["data_config_edited_since_training"] == []


def test_training_subjects_that_cannot_be_listed_are_reported(tmp_path, monkeypatch, capsys):
    # The training data's folder has moved: the experiment's own subject list is gone.
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    root = write_phantom_dataset(tmp_path / "old", 2, 9, shape=[32, 40], seed=0)
    data = {"dataset": "oasis", "root": str(root), "splits": PHANTOM[2]["splits"]}
    exp_num, folder = save_untrained_experiment(2, data)
    root.rename(tmp_path / "new")
    other = tmp_path / "moved.json"
    other.write_text(json.dumps({"model_name": "fnoreg", "model_config": MODEL[2],
                                 "data_config": {**data, "root": str(tmp_path / "new")}}))
    assert evaluate(2, "--exp_num", str(exp_num), "--n_panels", "0", "--config_file", str(other)) == 0
    assert "the test split was not checked for them" in capsys.readouterr().err
    (tagged,) = [p for p in (folder / "eval").iterdir() if p.name.startswith("final_32_new-")]
    assert json.loads((tagged / "summary.json").read_text())["training_subjects_in_split"] is None


def test_images_are_resized_as_the_experiment_was_trained(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    exp_num, folder = save_untrained_experiment(2, PHANTOM[2])  # antialias false (the default)
    other = tmp_path / "antialiased.json"
    other.write_text(json.dumps({"model_name": "fnoreg", "model_config": MODEL[2],
                                 "data_config": {**PHANTOM[2], "antialias": True}}))
    import engine.evaluation as ev

    used = []
    original = ev.DeviceSplit

    def recording(split, shape, device, antialias=False, **kwargs):
        used.append(antialias)
        return original(split, shape, device, antialias, **kwargs)

    monkeypatch.setattr(ev, "DeviceSplit", recording)
    args = ("--exp_num", str(exp_num), "--n_panels", "0", "--size", "16")
    assert evaluate(2, *args, "--config_file", str(other)) == 0
    assert f"antialias true in {other} is not used" in capsys.readouterr().err
    (tagged,) = (folder / "eval").iterdir()
    assert used == [False] and json.loads((tagged / "summary.json").read_text())["antialias"] is False


def test_refine_reports_network_and_refined_scores_in_its_own_folder(exp_root, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(exp_root))
        assert evaluate(2, "--exp_num", "1", "--refine", "3", "--n_panels", "0") == 0
    out = capsys.readouterr().out
    assert "net" in out and "+refine 3" in out
    folder = default_eval(exp_root, 2).with_name(default_eval(exp_root, 2).name + "_refine3")
    summary = json.loads((folder / "summary.json").read_text())
    plain = json.loads((default_eval(exp_root, 2) / "summary.json").read_text())
    assert summary["refine_steps"] == 3 and summary["refine_loss"]["jac_param"] > 0
    net = summary["network"]
    # The network's own field scores exactly as the plain evaluation did; refinement costs time.
    assert net["dice_mean"] == pytest.approx(plain["dice_mean"]) and net["folding_percent_mean"] == pytest.approx(
        plain["folding_percent_mean"])
    assert summary["time_per_pair_s"] > net["time_per_pair_s"]
    assert summary["sdlogj_mean"] != net["sdlogj_mean"]  # the field moved


def test_refine_flag_errors(exp_root, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(exp_root))
        with pytest.raises(SystemExit):
            evaluate(2, "--exp_num", "1", "--refine", "-1")
    assert "--refine" in one_error_line(capsys)


def test_fold_repair_flag_overrides_the_trained_setting_in_its_own_folder(exp_root, capsys):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(exp_root))
        assert evaluate(2, "--exp_num", "1", "--fold_repair", "on", "--n_panels", "0") == 0
        assert evaluate(2, "--exp_num", "1", "--fold_repair", "off", "--n_panels", "0") == 0
    plain = json.loads((default_eval(exp_root, 2) / "summary.json").read_text())
    assert not plain["model_config"].get("fold_repair", False) and plain["fold_repair_override"] is None
    for setting in ("on", "off"):
        folder = default_eval(exp_root, 2).with_name(default_eval(exp_root, 2).name + f"_repair{setting}")
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["fold_repair_override"] == setting
        assert summary["model_config"]["fold_repair"] is (setting == "on")  # what ran, not what was trained
        # A field that folds nowhere is returned unchanged by the repair: the same scores.
        if plain["folding_percent_mean"] == 0:
            assert summary["dice_mean"] == pytest.approx(plain["dice_mean"])


def test_set_fold_repair_validates_and_leaves_the_info_it_was_given():
    from engine.checkpoint import set_fold_repair

    model = build_model("fnoreg", {**MODEL[2], "fold_repair": True}, 2)
    info = {"model_config": {**MODEL[2], "fold_repair": True}}
    assert set_fold_repair(model, info, None) is info and model.fold_repair
    out = set_fold_repair(model, info, "off")
    assert model.fold_repair is False and out["model_config"]["fold_repair"] is False
    assert info["model_config"]["fold_repair"] is True  # the caller's record is not modified
    with pytest.raises(UserError, match="FNOReg models only"):
        set_fold_repair(build_model("voxelmorph", {"preset": "vxm2"}, 2), {"model_config": {}}, "off")
    with pytest.raises(UserError, match="on or off"):
        set_fold_repair(model, info, "maybe")
