"""Splits by subject-list position and the pair protocols of the published OASIS runs.

A split is an inclusive range ``[first, last]`` of line indices into ``subjects.txt`` (or into the
phantom's subject list). A pair is ``(moving_index, fixed_index)`` into the split's own subjects.

Published protocols (DESIGN A.7, as the released data loaders enumerate them):

- 2D: train 0-200 with all ordered pairs of distinct subjects (201 * 200 = 40,200 per epoch);
  validation 201-212 and test 213-413 with consecutive pairs in both directions
  (test: 2 * 200 = 400 pairs).
- 3D: train 0-383 with consecutive pairs in both directions (2 * 383 = 766 per epoch);
  validation 384-393 and test 394-413 with consecutive pairs in one direction only,
  ``(i, i + 1)`` (test: 19 pairs, validation: 9).

The released 2D training loader enumerates its 40,200 pairs with an index formula that never
uses the last training subject as the moving image and visits each ``(i, i + 1)`` twice; here
the 40,200 pairs are exactly the ordered pairs of distinct subjects, each once.
"""

from __future__ import annotations

import warnings

import torch

from utils.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")

# Inclusive line-index ranges of the published protocol, per dimension.
PUBLISHED_SPLITS: dict[int, dict[str, list[int]]] = {
    2: {"train": [0, 200], "val": [201, 212], "test": [213, 413]},
    3: {"train": [0, 383], "val": [384, 393], "test": [394, 413]},
}
PUBLISHED_TRAIN_PAIRS = {2: "all_ordered", 3: "consecutive"}
PUBLISHED_EVAL_PAIRS = {2: "consecutive", 3: "consecutive_one_way"}


def all_ordered_pairs(n: int) -> torch.Tensor:
    """All ordered pairs ``(i, j)`` of distinct subjects, row-major in ``i``: ``n * (n - 1)`` rows.

    Parameters
    ----------
    n : int
        Number of subjects.

    Returns
    -------
    torch.Tensor
        ``(n * (n - 1), 2)`` int64 tensor of ``(moving, fixed)`` indices.
    """
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return torch.stack([i[keep], j[keep]], dim=1)


def consecutive_pairs(n: int, both_directions: bool = True) -> torch.Tensor:
    """Pairs of neighbours in the subject list.

    Parameters
    ----------
    n : int
        Number of subjects.
    both_directions : bool
        If True, ``(0, 1), (1, 2), ..., (n-2, n-1)`` followed by the reversed pairs
        ``(n-1, n-2), ..., (1, 0)`` (the released order): ``2 * (n - 1)`` rows. If False, only
        the forward pairs: ``n - 1`` rows.

    Returns
    -------
    torch.Tensor
        ``(P, 2)`` int64 tensor of ``(moving, fixed)`` indices.
    """
    first = torch.arange(max(n - 1, 0))
    forward = torch.stack([first, first + 1], dim=1)
    if not both_directions:
        return forward
    return torch.cat([forward, forward.flip(0).flip(1)])


PAIR_PROTOCOLS = {
    "all_ordered": all_ordered_pairs,
    "consecutive": lambda n: consecutive_pairs(n, both_directions=True),
    "consecutive_one_way": lambda n: consecutive_pairs(n, both_directions=False),
}


def make_pairs(protocol: str, n: int) -> torch.Tensor:
    """Pairs of ``protocol`` ("all_ordered", "consecutive", "consecutive_one_way") for n subjects."""
    if protocol not in PAIR_PROTOCOLS:
        raise ConfigError(f"unknown pair protocol {protocol!r}; use one of "
                          f"{', '.join(map(repr, PAIR_PROTOCOLS))}")
    return PAIR_PROTOCOLS[protocol](n)


def default_splits(n_subjects: int) -> dict[str, list[int]]:
    """Contiguous splits for a list of ``n_subjects`` (at least 6): about 5/8 train, 1/8 val, 1/4 test.

    Used for the phantom, whose subject count is chosen by the user; the published OASIS ranges
    are in :data:`PUBLISHED_SPLITS`.
    """
    if n_subjects < 6:
        raise ConfigError(f"default splits need at least 6 subjects (2 per split), got "
                          f"{n_subjects}; set data_config.splits explicitly")
    n_test = max(2, round(n_subjects / 4))
    n_val = max(2, round(n_subjects / 8))
    n_train = n_subjects - n_val - n_test
    return {"train": [0, n_train - 1], "val": [n_train, n_train + n_val - 1],
            "test": [n_train + n_val, n_subjects - 1]}


def split_indices(splits: dict[str, list[int] | None], name: str, n_subjects: int,
                  source: str = "the subject list") -> list[int]:
    """Line indices of split ``name``, checked against the subject count.

    Parameters
    ----------
    splits : dict
        Resolved ``data_config["splits"]``: name -> inclusive ``[first, last]`` or None.
    name : str
        "train", "val" or "test".
    n_subjects : int
        Length of the subject list.
    source : str
        How to name the subject list in errors (e.g. the path of ``subjects.txt``).

    Returns
    -------
    list of int
        ``list(range(first, last + 1))``.
    """
    if name not in SPLIT_NAMES:
        raise ConfigError(f"unknown split {name!r}; use one of {', '.join(map(repr, SPLIT_NAMES))}")
    rng = splits.get(name)
    if rng is None:
        raise ConfigError(f"data_config.splits.{name} is not set (null); give it an inclusive "
                          f"[first, last] range of subject indices")
    first, last = rng
    if last >= n_subjects:
        raise ConfigError(f"data_config.splits.{name} = [{first}, {last}] needs {last + 1} "
                          f"subjects but {source} has {n_subjects}; shrink the range")
    return list(range(first, last + 1))


def warn_overlaps(splits: dict[str, list[int] | None]) -> None:
    """Warn when two configured splits share subjects (allowed, but usually a leak)."""
    named = [(k, v) for k, v in splits.items() if v is not None]
    for a in range(len(named)):
        for b in range(a + 1, len(named)):
            (na, (fa, la)), (nb, (fb, lb)) = named[a], named[b]
            lo, hi = max(fa, fb), min(la, lb)
            if lo <= hi:
                warnings.warn(f"data_config.splits.{na} and .{nb} share subjects {lo}-{hi}",
                              stacklevel=3)
