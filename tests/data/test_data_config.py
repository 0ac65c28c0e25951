"""data_config validation (named test_data_config.py: tests/engine/test_config.py exists)."""

import json
import warnings

import pytest

from data.config import validate_data_config
from utils.errors import ConfigError


@pytest.mark.parametrize("dim", [2, 3])
def test_phantom_defaults(dim):
    cfg = validate_data_config({}, dim)
    assert cfg["dataset"] == "phantom" and cfg["root"] is None
    assert cfg["label_scheme"] == ("seg24" if dim == 2 else "seg35")
    assert cfg["phantom"]["shape"] == ([160, 192] if dim == 2 else [160, 192, 224])
    n = cfg["phantom"]["n_subjects"]
    ranges = [cfg["splits"][k] for k in ("train", "val", "test")]
    assert ranges[0][0] == 0 and ranges[-1][1] == n - 1
    assert cfg["antialias"] is False and cfg["require_labels"] is False
    assert validate_data_config(cfg, dim) == cfg  # resolving is idempotent
    assert json.loads(json.dumps(cfg)) == cfg      # and the result is plain JSON


def test_oasis_published_defaults():
    cfg = validate_data_config({"dataset": "oasis", "root": "/data/oasis2d"}, 2)
    assert cfg["splits"] == {"train": [0, 200], "val": [201, 212], "test": [213, 413]}
    assert (cfg["train_pairs"], cfg["eval_pairs"]) == ("all_ordered", "consecutive")
    assert cfg["phantom"] is None
    cfg3 = validate_data_config({"dataset": "oasis", "root": "/data/oasis3d"}, 3)
    assert cfg3["splits"] == {"train": [0, 383], "val": [384, 393], "test": [394, 413]}
    assert (cfg3["train_pairs"], cfg3["eval_pairs"]) == ("consecutive", "consecutive_one_way")
    assert validate_data_config(cfg3, 3) == cfg3


def test_partial_splits_keep_the_other_defaults():
    cfg = validate_data_config({"dataset": "oasis", "root": "/d", "splits": {"test": [213, 300]}}, 2)
    assert cfg["splits"]["train"] == [0, 200] and cfg["splits"]["test"] == [213, 300]


def test_input_is_not_modified():
    given = {"phantom": {"n_subjects": 10}}
    validate_data_config(given, 2)
    assert given == {"phantom": {"n_subjects": 10}}


@pytest.mark.parametrize("cfg, words", [
    ({"batch": 1}, ["data_config.batch"]),
    ({"dataset": "mnist"}, ["data_config.dataset", "'oasis'"]),
    ({"dataset": "oasis"}, ["data_config.root", "subjects.txt"]),
    ({"label_scheme": "seg35"}, ["data_config.label_scheme", "2D", "'seg24'"]),
    ({"antialias": "yes"}, ["data_config.antialias", "true or false"]),
    ({"splits": {"train": [0]}}, ["data_config.splits.train", "[first, last]"]),
    ({"splits": {"train": [5, 2]}}, ["data_config.splits.train", "first <= last"]),
    ({"splits": {"dev": [0, 1]}}, ["data_config.splits.dev"]),
    ({"splits": {"test": [50, 80]}}, ["data_config.splits.test", "81 subjects", "is 64"]),
    ({"train_pairs": "random"}, ["data_config.train_pairs", "'all_ordered'"]),
    ({"eval_pairs": 3}, ["data_config.eval_pairs", "a string"]),
    ({"phantom": {"n_subjects": True}}, ["data_config.phantom.n_subjects", "an integer"]),
    ({"phantom": {"n_subjects": 4}}, ["data_config.phantom.n_subjects", "too few"]),
    ({"phantom": {"shape": [160]}}, ["data_config.phantom.shape", "2 integers"]),
    ({"phantom": {"size": 3}}, ["data_config.phantom.size"]),
    ({"dataset": "oasis", "root": "/d", "phantom": {"seed": 1}}, ["data_config.phantom"]),
])
def test_errors_name_the_key(cfg, words):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError) as info:
            validate_data_config(cfg, 2)
    msg = str(info.value)
    assert "\n" not in msg
    for word in words:
        assert word in msg, (word, msg)


def test_small_phantom_with_explicit_splits():
    cfg = validate_data_config({"phantom": {"n_subjects": 4},
                                "splits": {"train": [0, 1], "val": [2, 2], "test": [3, 3]}}, 2)
    assert cfg["phantom"]["n_subjects"] == 4


def test_overlapping_splits_warn():
    with pytest.warns(UserWarning, match="splits.val and .test share subjects 2-2"):
        validate_data_config({"phantom": {"n_subjects": 3},
                              "splits": {"train": [0, 1], "val": [2, 2], "test": [2, 2]}}, 2)


def test_bad_dim():
    with pytest.raises(ConfigError, match="dim must be 2 or 3"):
        validate_data_config({}, 4)
