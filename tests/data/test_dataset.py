"""In-memory splits for phantom and OASIS data through one code path."""

import warnings

import pytest
import torch

from data import oasis
from data.dataset import RegistrationSplit, load_split, load_splits, shared_subjects, split_subjects
from data.phantom import write_phantom_dataset
from utils.errors import ConfigError, DataError

SMALL_PHANTOM = {"phantom": {"n_subjects": 12, "shape": [32, 40]}}


def test_phantom_default_splits():
    splits = load_splits(SMALL_PHANTOM, 2, ("train", "val", "test"))
    train, val, test = splits["train"], splits["val"], splits["test"]
    assert [len(s.subjects) for s in (train, val, test)] == [7, 2, 3]
    assert train.images.shape == (7, 1, 32, 40) and train.images.dtype == torch.float32
    assert train.labels.shape == (7, 1, 32, 40) and train.labels.dtype == torch.int16
    assert train.has_labels.dtype == torch.bool and bool(train.has_labels.all())
    assert train.pairs.dtype == torch.int64 and len(train.pairs) == 7 * 6  # all ordered
    assert val.pairs.tolist() == [[0, 1], [1, 0]]                           # consecutive, both
    assert train.label_ids == list(range(1, 25)) and train.label_names[5] == "L-thalamus"
    assert train.subjects[0] == "PHANTOM_0000" and test.subjects[-1] == "PHANTOM_0011"
    assert train.shape == (32, 40) and train.missing_label_files == []
    assert "7 subjects, 42 pairs" in repr(train)


def test_phantom_3d_protocol_and_seg4():
    cfg = {"phantom": {"n_subjects": 8, "shape": [16, 20, 24]}, "label_scheme": "seg4"}
    splits = load_splits(cfg, 3, ("train", "test"))
    assert splits["train"].pairs.tolist() == [[0, 1], [1, 2], [2, 3], [3, 2], [2, 1], [1, 0]]
    assert splits["test"].pairs.tolist() == [[0, 1]]
    assert splits["train"].label_ids == [1, 2, 3, 4]
    assert splits["train"].images.shape == (4, 1, 16, 20, 24)


def test_same_subjects_whether_loaded_together_or_alone():
    together = load_splits(SMALL_PHANTOM, 2, ("train", "test"))
    alone = load_split(SMALL_PHANTOM, 2, "test")
    assert torch.equal(together["test"].images, alone.images)
    assert torch.equal(together["test"].labels, alone.labels)


def test_published_2d_training_pairs_on_a_414_subject_list():
    splits = {"train": [0, 200], "val": [201, 212], "test": [213, 413]}
    cfg = {"phantom": {"n_subjects": 414, "shape": [16, 16]}, "splits": splits}
    train = load_split(cfg, 2, "train")
    assert len(train.pairs) == 40_200
    assert train.images.shape[0] == 201  # 40,200 pairs index 201 slices held in memory


def test_published_2d_test_split_through_the_oasis_reader(tmp_path, make_subject):
    # A 414-line subject list; only the 201 test subjects need files (tiny ones).
    names = [f"S{i:03d}" for i in range(414)]
    (tmp_path / "subjects.txt").write_text("\n".join(names))
    for name in names[213:]:
        make_subject(tmp_path, name, 2, schemes=("seg24",), shape=(4, 5))
    test = load_split({"dataset": "oasis", "root": str(tmp_path)}, 2, "test")
    assert test.images.shape == (201, 1, 4, 5) and len(test.pairs) == 400
    assert test.subjects[0] == "S213" and test.pairs[:2].tolist() == [[0, 1], [1, 2]]
    with pytest.raises(DataError, match="S000 is missing"):
        load_split({"dataset": "oasis", "root": str(tmp_path)}, 2, "train")


def test_oasis_reads_every_file_once(tiny2d, monkeypatch):
    calls = []
    original = oasis._load_array
    monkeypatch.setattr(oasis, "_load_array", lambda path, dim: calls.append(path.name)
                        or original(path, dim))
    cfg = {"dataset": "oasis", "root": str(tiny2d),
           "splits": {"train": [0, 3], "val": [4, 5], "test": [2, 5]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_splits(cfg, 2, ("train", "val", "test"))
    assert calls.count("slice_norm.nii.gz") == 6 and calls.count("slice_seg24.nii.gz") == 6
    assert torch.equal(splits["test"].images[0], splits["train"].images[2])
    assert len(splits["train"].pairs) == 12 and len(splits["test"].pairs) == 6


def test_subject_without_labels(tiny2d):
    (tiny2d / "SUBJ_001" / "slice_seg24.nii.gz").unlink()
    cfg = {"dataset": "oasis", "root": str(tiny2d),
           "splits": {"train": [0, 2], "val": [3, 4], "test": [5, 5]}}
    split = load_split(cfg, 2, "train")
    assert split.has_labels.tolist() == [True, False, True]
    assert int(split.labels[1].abs().sum()) == 0
    assert split.missing_label_files == [str(tiny2d / "SUBJ_001" / "slice_seg24.nii.gz")]
    with pytest.raises(DataError, match="SUBJ_001/slice_seg24.nii.gz is missing"):
        split.require_labels()
    assert "1 of 3 subject(s) of the train split have no label map" in split.missing_labels_warning()
    load_split(cfg, 2, "val").require_labels()  # a fully labelled split passes
    assert load_split(cfg, 2, "val").missing_labels_warning() is None
    with pytest.raises(DataError, match="SUBJ_001/slice_seg24.nii.gz"):
        load_split({**cfg, "require_labels": True}, 2, "train")


def test_no_labels_at_all(tiny2d):
    for s in range(6):
        (tiny2d / f"SUBJ_{s:03d}" / "slice_seg4.nii.gz").unlink()
    cfg = {"dataset": "oasis", "root": str(tiny2d), "label_scheme": "seg4",
           "splits": {"train": [0, 3], "val": [4, 5], "test": [4, 5]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = load_split(cfg, 2, "train")
    assert split.labels is None and not split.has_labels.any()
    assert split.label_ids == [1, 2, 3, 4]


def test_split_that_does_not_fit(tiny2d):
    with pytest.raises(ConfigError) as info:
        load_split({"dataset": "oasis", "root": str(tiny2d)}, 2, "train")
    msg = str(info.value)
    assert "[0, 200]" in msg and "201 subjects" in msg and "has 6" in msg
    assert "subjects.txt" in msg


def test_split_subjects_match_the_loaded_split(tiny2d):
    cfg = {"dataset": "oasis", "root": str(tiny2d), "splits": {"train": [0, 2], "val": [3, 3], "test": [4, 5]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert split_subjects(cfg, 2, "test") == load_split(cfg, 2, "test").subjects
    phantom = {"phantom": {"n_subjects": 12, "shape": [32, 40], "seed": 0}}
    assert split_subjects(phantom, 2, "val") == load_split(phantom, 2, "val").subjects


def test_shared_subjects(tiny2d, tmp_path):
    def phantom(seed, splits, n=12):
        return {"phantom": {"n_subjects": n, "shape": [32, 40], "seed": seed}, "splits": splits}
    trained = phantom(0, {"train": [0, 5], "val": [6, 7], "test": [8, 11]})
    # Another subject count, grid and split ranges: the same subjects by index under the same seed.
    moved = {**phantom(0, {"train": [0, 1], "val": [2, 3], "test": [4, 7]}, n=20)}
    moved["phantom"]["shape"] = [16, 20]
    assert shared_subjects(trained, "train", moved, "test", 2) == ["PHANTOM_0004", "PHANTOM_0005"]
    assert shared_subjects(trained, "train", trained, "test", 2) == []
    assert shared_subjects(trained, "train", phantom(1, moved["splits"], n=20), "test", 2) == []  # other seed
    # OASIS-layout data: the same subject folder names wherever the folders are.
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "subjects.txt").write_text((tiny2d / "subjects.txt").read_text())
    a = {"dataset": "oasis", "root": str(tiny2d), "splits": {"train": [0, 3], "val": [4, 4], "test": [5, 5]}}
    b = {"dataset": "oasis", "root": str(copy), "splits": {"train": [4, 5], "val": [0, 0], "test": [1, 3]}}
    names = (tiny2d / "subjects.txt").read_text().split()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert shared_subjects(a, "train", b, "test", 2) == names[1:4]
        assert shared_subjects(a, "train", trained, "test", 2) == []  # other kinds of data
        # Unknown when a subject list cannot be read.
        assert shared_subjects({**a, "root": str(tmp_path / "gone")}, "train", b, "test", 2) is None
        # Phantoms of two seeds written to disk are other subjects, and their folder names say so.
        for seed in (0, 1):
            write_phantom_dataset(tmp_path / f"seed{seed}", 2, 4, shape=(16, 20), seed=seed)
        on_disk = [{"dataset": "oasis", "root": str(tmp_path / f"seed{seed}"),
                    "splits": {"train": [0, 1], "val": [2, 2], "test": [0, 3]}} for seed in (0, 1)]
        assert shared_subjects(on_disk[0], "train", on_disk[1], "test", 2) == []
        assert shared_subjects(on_disk[0], "train", on_disk[0], "test", 2) == ["PHANTOM_0000", "PHANTOM_0001"]
        # A phantom in memory and the same phantom on disk are the same subjects (and another seed's are not).
        in_memory = phantom(0, {"train": [0, 1], "val": [2, 2], "test": [3, 3]}, n=4)
        assert shared_subjects(in_memory, "train", on_disk[0], "test", 2) == ["PHANTOM_0000", "PHANTOM_0001"]
        assert shared_subjects(on_disk[0], "train", in_memory, "val", 2) == []
        assert shared_subjects(on_disk[1], "train", {**in_memory, "splits": on_disk[1]["splits"]}, "test", 2) == []


def test_3d_oasis(tiny3d):
    cfg = {"dataset": "oasis", "root": str(tiny3d),
           "splits": {"train": [0, 2], "val": [3, 3], "test": [3, 3]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = load_split(cfg, 3, "train")
    assert split.images.shape == (3, 1, 8, 10, 12) and split.labels.dtype == torch.int16
    assert len(split.pairs) == 4 and split.label_ids == list(range(1, 36))


def test_real_samples(oasis_samples):
    cfg = {"dataset": "oasis", "root": str(oasis_samples / "2d"),
           "splits": {"train": [0, 1], "val": [1, 2], "test": [1, 2]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splits = load_splits(cfg, 2, ("train", "test"))
    train, test = splits["train"], splits["test"]
    assert isinstance(train, RegistrationSplit)
    assert train.images.shape == (2, 1, 160, 192) and len(train.pairs) == 2
    assert test.subjects == ["OASIS_OAS1_0002_MR1", "VXM_TESTSCAN"]
    assert test.has_labels.tolist() == [False, True]
    assert test.pairs.tolist() == [[0, 1], [1, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg4 = load_split({**cfg, "label_scheme": "seg4"}, 2, "test")
    assert bool(seg4.has_labels.all()) and seg4.label_ids == [1, 2, 3, 4]


def test_consecutive_splits_are_views_and_others_are_copies():
    from data.dataset import _take_rows

    x = torch.arange(10.0).view(10, 1)
    view = _take_rows(x, torch.tensor([3, 4, 5]))
    assert view.data_ptr() == x[3:].data_ptr() and torch.equal(view[:, 0], torch.tensor([3.0, 4.0, 5.0]))
    copy = _take_rows(x, torch.tensor([5, 3]))
    assert copy.data_ptr() != x.data_ptr() and torch.equal(copy[:, 0], torch.tensor([5.0, 3.0]))
    assert _take_rows(x, torch.tensor([], dtype=torch.long)).shape == (0, 1)
