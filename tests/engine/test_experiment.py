"""Experiment numbering, metadata, restarts that keep old runs, and atomic files."""

import threading

import pytest

from engine import experiment as xp
from utils.errors import UserError
from utils.fileio import atomic_torch_save, write_json


@pytest.fixture(autouse=True)
def _root(tmp_path, monkeypatch):
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))


def test_numbering_is_sequential_and_skips_taken():
    assert xp.create_experiment(2)[0] == 1
    assert xp.create_experiment(2)[0] == 2
    (xp.experiments_root(2) / "exp7").mkdir()
    assert xp.create_experiment(2)[0] == 8
    assert xp.create_experiment(3)[0] == 1
    assert xp.list_experiments(2) == [1, 2, 7, 8]


def test_concurrent_starts_get_distinct_numbers():
    numbers, barrier = [], threading.Barrier(8)

    def claim():
        barrier.wait()
        numbers.append(xp.create_experiment(2)[0])

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 9))


def test_unknown_experiment_lists_existing():
    _, folder = xp.create_experiment(2)
    write_json(folder / "config.json", {})
    with pytest.raises(UserError, match=r"experiment 5 not found .*existing 2D experiments: 1"):
        xp.experiment_dir(2, 5)
    assert xp.experiment_dir(2, 1) == folder


def test_metadata_runs_and_archive():
    num, folder = xp.create_experiment(2)
    config = {"description": "d", "model_name": "fnoreg", "dim": 2}
    xp.write_metadata(folder, xp.new_metadata(num, config, 123, (80, 96), "cpu"))
    i = xp.start_run(folder, "start", 0, "cpu")
    xp.end_run(folder, i, "finished", 3)
    meta = xp.read_metadata(folder)
    for key in ("exp_num", "description", "model_name", "n_params", "dim", "train_size", "runs", "versions",
                "git_commit", "device"):
        assert key in meta
    assert meta["runs"][0]["status"] == "finished" and meta["runs"][0]["end_epoch"] == 3
    assert set(meta["versions"]) >= {"python", "torch", "neuraloperator"}
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "ckpt_epoch1.pt").write_text("x")
    (folder / "weights.pth").write_text("w")
    archived = xp.archive_previous_run(folder)
    assert (archived / "checkpoints" / "ckpt_epoch1.pt").read_text() == "x"
    assert (archived / "weights.pth").read_text() == "w"
    assert not (folder / "weights.pth").exists()
    assert xp.archive_previous_run(folder) is None


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"bad": Unpicklable()}, path)
    import torch

    assert torch.load(path, weights_only=True) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
