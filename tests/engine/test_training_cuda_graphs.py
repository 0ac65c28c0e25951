"""``train_<d>d.py --cuda_graphs`` end to end on tiny phantoms, with the CUDA capture stood in for.

The capture itself needs a GPU (``tests/models/test_cuda.py``); here the trainer's use of
:class:`utils.training_graphs.TrainingGraphs` is tested through the CPU stand-in of
``tests/utils/test_training_graphs.py``, whose "replay" is the eager call.
"""

import json

import engine.training
from tests.engine.test_training import assert_same_weights, train, weights, write_config
from tests.utils.test_training_graphs import CpuTrainingGraphs


def test_cuda_graphs_flag_on_the_cpu_is_a_notice(tmp_path, exp_root, capsys):
    assert train("--config_file", write_config(tmp_path, train_config={"epochs": 1}), "--cuda_graphs") == 0
    assert "--cuda_graphs has no effect on the CPU" in capsys.readouterr().err


def test_a_run_through_the_graphs_trains_the_weights_of_an_eager_run(tmp_path, exp_root, monkeypatch):
    """Capture once, replay every step; validation runs eagerly; the weights are an eager run's."""
    config = write_config(tmp_path, train_config={"epochs": 2})
    assert train("--config_file", config) == 0
    made = []

    class Recording(CpuTrainingGraphs):
        def __init__(self, model):
            super().__init__(model)
            made.append(self)

    monkeypatch.setattr(engine.training, "cuda_graphs_on", lambda requested, device: bool(requested))
    monkeypatch.setattr(engine.training, "TrainingGraphs", Recording)
    assert train("--config_file", config, "--cuda_graphs") == 0
    (net,) = made
    assert net.captured == 1 and net.replays == 2 * 3 and not net.eager_reasons  # 3 steps an epoch
    assert_same_weights(weights(exp_root / "2d" / "exp1"), weights(exp_root / "2d" / "exp2"))
    runs = [json.loads((exp_root / "2d" / f"exp{n}" / "metadata.json").read_text())["runs"] for n in (1, 2)]
    assert "cuda_graphs" not in runs[0][-1] and runs[1][-1]["cuda_graphs"] == {"replays": 6, "eager": []}


def test_checkpointing_trains_eagerly_with_a_notice(tmp_path, exp_root, monkeypatch, capsys):
    monkeypatch.setattr(engine.training, "cuda_graphs_on", lambda requested, device: bool(requested))
    config = write_config(tmp_path, train_config={"epochs": 1}, model_config={"checkpointing": True})
    assert train("--config_file", config, "--cuda_graphs") == 0
    assert "--cuda_graphs is not used with activation checkpointing" in capsys.readouterr().err


def test_multires_trains_eagerly_with_a_notice(tmp_path, exp_root, monkeypatch, capsys):
    """Each step draws another size: every step would capture (about 20 eager steps' work) and replay once."""
    monkeypatch.setattr(engine.training, "cuda_graphs_on", lambda requested, device: bool(requested))
    config = write_config(tmp_path, train_config={"epochs": 1, "multires": {"min_size": 16, "max_size": 32}})
    assert train("--config_file", config, "--cuda_graphs") == 0
    assert "--cuda_graphs is not used with train_config.multires" in capsys.readouterr().err
