"""Pair protocols and split resolution, including the published counts (DESIGN A.7)."""

import pytest
import torch

from data.pairs import (PUBLISHED_EVAL_PAIRS, PUBLISHED_SPLITS, PUBLISHED_TRAIN_PAIRS,
                        all_ordered_pairs, consecutive_pairs, default_splits, make_pairs,
                        split_indices, warn_overlaps)
from utils.errors import ConfigError


def test_all_ordered_pairs():
    pairs = all_ordered_pairs(4)
    assert pairs.dtype == torch.int64 and pairs.shape == (12, 2)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert len({tuple(p) for p in pairs.tolist()}) == 12
    # Every subject is moving and fixed equally often (unlike the released index formula).
    assert torch.bincount(pairs[:, 0]).tolist() == [3, 3, 3, 3]
    assert all_ordered_pairs(201).shape == (40_200, 2)


def test_consecutive_pairs():
    assert consecutive_pairs(4).tolist() == [[0, 1], [1, 2], [2, 3], [3, 2], [2, 1], [1, 0]]
    assert consecutive_pairs(4, both_directions=False).tolist() == [[0, 1], [1, 2], [2, 3]]
    assert consecutive_pairs(1).shape == (0, 2)
    assert consecutive_pairs(201).shape == (400, 2)


def _counts(dim: int, n_subjects: int = 414) -> dict:
    splits = PUBLISHED_SPLITS[dim]
    out = {}
    for name in ("train", "val", "test"):
        n = len(split_indices(splits, name, n_subjects))
        protocol = PUBLISHED_TRAIN_PAIRS[dim] if name == "train" else PUBLISHED_EVAL_PAIRS[dim]
        out[name] = (n, len(make_pairs(protocol, n)))
    return out


def test_published_protocol_2d():
    assert _counts(2) == {"train": (201, 40_200), "val": (12, 22), "test": (201, 400)}


def test_published_protocol_3d():
    assert _counts(3) == {"train": (384, 766), "val": (10, 9), "test": (20, 19)}


def test_split_that_does_not_fit_names_both_numbers():
    with pytest.raises(ConfigError) as info:
        split_indices(PUBLISHED_SPLITS[2], "test", 3, "/data/subjects.txt")
    msg = str(info.value)
    assert "data_config.splits.test" in msg and "414" in msg and "has 3" in msg
    assert "/data/subjects.txt" in msg and "\n" not in msg


def test_unset_and_unknown_split():
    with pytest.raises(ConfigError, match="splits.val is not set"):
        split_indices({"train": [0, 1], "val": None}, "val", 5)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        split_indices({}, "dev", 5)
    with pytest.raises(ConfigError, match="unknown pair protocol"):
        make_pairs("random", 5)


@pytest.mark.parametrize("n", [6, 7, 20, 64, 100])
def test_default_splits_cover_the_list(n):
    splits = default_splits(n)
    covered = [i for name in ("train", "val", "test") for i in split_indices(splits, name, n)]
    assert covered == list(range(n))
    assert all(hi - lo + 1 >= 2 for lo, hi in splits.values())
    with pytest.raises(ConfigError):
        default_splits(5)


def test_overlap_warning():
    with pytest.warns(UserWarning, match="train and .test share subjects 5-7"):
        warn_overlaps({"train": [0, 7], "val": None, "test": [5, 9]})
