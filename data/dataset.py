"""Registration splits held in memory: subjects, images, labels and the pairs to register.

Phantom and OASIS subjects go through the same code: a *source* lists subject ids and reads a
set of them; :func:`load_splits` resolves the configured ranges against that list, reads every
needed subject once, and attaches the pair protocol of each split. The tensors stay on the CPU
at the data's native resolution; the trainer moves them to its device, resizes them there and
gathers batches by ``pairs`` (a 2D epoch of 40,200 pairs indexes 201 slices in memory).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from data import oasis, phantom
from data.config import validate_data_config
from data.labels import SCHEMES
from data.pairs import make_pairs, split_indices
from utils.errors import ConfigError, DataError


@dataclass
class RegistrationSplit:
    """One split of subjects, in memory, with its registration pairs.

    Attributes
    ----------
    name : str
        "train", "val" or "test".
    subjects : list of str
        Subject ids; ``subjects[i]`` is ``images[i]``.
    images : torch.Tensor
        ``(N, 1, *shape)`` float32 in [0, 1], CPU, native resolution.
    labels : torch.Tensor or None
        ``(N, 1, *shape)`` int16 label maps (0 where a subject has none); None if no subject has.
    has_labels : torch.Tensor
        ``(N,)`` bool: which subjects have a label map.
    pairs : torch.Tensor
        ``(P, 2)`` int64 ``(moving_index, fixed_index)`` rows into ``images``.
    label_ids : list of int
        Labels to score, background excluded (e.g. 1..24 for seg24).
    label_names : dict of int to str
        Name of each label id.
    missing_label_files : list of str
        Label files expected but absent (one per subject without labels; empty for the phantom).
    """

    name: str
    subjects: list[str]
    images: torch.Tensor
    labels: torch.Tensor | None
    has_labels: torch.Tensor
    pairs: torch.Tensor
    label_ids: list[int]
    label_names: dict[int, str]
    missing_label_files: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape of the images."""
        return tuple(self.images.shape[2:])

    def require_labels(self) -> None:
        """Raise DataError naming a missing label file if any subject of the split lacks one."""
        if self.missing_label_files:
            n = len(self.missing_label_files)
            raise DataError(f"split {self.name!r} needs label maps but {n} subject(s) have none, "
                            f"e.g. {self.missing_label_files[0]} is missing; add the files or "
                            f"choose a data_config.label_scheme the data provides")

    def missing_labels_warning(self) -> str | None:
        """A one-line warning when some subjects of the split have no label map, else None."""
        if not self.missing_label_files:
            return None
        n = len(self.missing_label_files)
        return (f"warning: {n} of {len(self.subjects)} subject(s) of the {self.name} split have no label map "
                f"(e.g. {self.missing_label_files[0]}); Dice averages the pairs with label maps only "
                "(data_config.require_labels: true makes this an error)")

    def __repr__(self) -> str:
        labelled = int(self.has_labels.sum())
        return (f"RegistrationSplit({self.name!r}, {len(self.subjects)} subjects, "
                f"{len(self.pairs)} pairs, shape {self.shape}, {labelled} labelled)")


class _OasisSource:
    """Subjects of a neurite-OASIS folder (or anything written in its layout)."""

    def __init__(self, cfg: dict, dim: int):
        self.root = Path(cfg["root"]).expanduser()
        self.dim, self.scheme = dim, cfg["label_scheme"]
        self.subjects = oasis.read_subject_list(self.root)
        self.where = str(self.root / oasis.SUBJECT_LIST)
        self.label_names = SCHEMES[self.scheme]

    def read(self, indices: list[int], require_labels: bool):
        ids = [self.subjects[i] for i in indices]
        images, labels, missing = oasis.read_subjects(self.root, ids, self.dim, self.scheme,
                                                      require_labels)
        return images, labels, [None if m is None else str(m) for m in missing]


class _PhantomSource:
    """Synthetic subjects, generated on demand (subject i depends only on the seed and i)."""

    def __init__(self, cfg: dict, dim: int):
        self.params = cfg["phantom"]
        self.dim, self.scheme = dim, cfg["label_scheme"]
        self.subjects = phantom.subject_ids(self.params["n_subjects"], self.params["seed"])
        self.where = "the phantom (data_config.phantom.n_subjects)"
        self.label_names = phantom.phantom_label_names(self.scheme)

    def read(self, indices: list[int], require_labels: bool):
        images, labels = phantom.generate_phantom(indices, self.dim, self.params["shape"],
                                                  self.params["seed"], self.scheme)
        return images, labels, [None] * len(indices)


def _take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]``, as a view (no copy) when ``rows`` is a run of consecutive indices.

    Splits are index ranges, so each is usually a slice of the subjects read: a 3D training
    split of 384 full-size subjects is 10.6 GB of images, which a fancy-index copy would double.
    """
    if len(rows) and torch.equal(rows, torch.arange(int(rows[0]), int(rows[0]) + len(rows))):
        return x.narrow(0, int(rows[0]), len(rows))
    return x[rows]


def load_splits(data_config: dict, dim: int, splits=("train", "val")) -> dict[str, RegistrationSplit]:
    """Load several splits, reading (or generating) each subject once.

    Parameters
    ----------
    data_config : dict
        The ``data_config`` section (validated and resolved here; see :mod:`data.config`).
    dim : int
        2 or 3.
    splits : sequence of str
        Any of "train", "val", "test".

    Returns
    -------
    dict of str to RegistrationSplit
        One entry per requested split. Training splits use ``train_pairs``, the others
        ``eval_pairs``.

    Raises
    ------
    ConfigError
        A split range that does not fit the subject list (the message names both numbers).
    DataError
        Missing or malformed files; a missing label file when ``require_labels`` is set.
    """
    cfg = validate_data_config(data_config, dim)
    source = _OasisSource(cfg, dim) if cfg["dataset"] == "oasis" else _PhantomSource(cfg, dim)
    wanted = {name: split_indices(cfg["splits"], name, len(source.subjects), source.where)
              for name in splits}
    needed = sorted(set().union(*wanted.values()))
    images, labels, missing = source.read(needed, cfg["require_labels"])
    row = {index: k for k, index in enumerate(needed)}

    out = {}
    for name, indices in wanted.items():
        rows = torch.tensor([row[i] for i in indices])
        split_missing = [missing[r] for r in rows.tolist()]
        has = torch.tensor([m is None for m in split_missing], dtype=torch.bool)
        protocol = cfg["train_pairs"] if name == "train" else cfg["eval_pairs"]
        split = RegistrationSplit(
            name=name,
            subjects=[source.subjects[i] for i in indices],
            images=_take_rows(images, rows),
            labels=None if not has.any() else _take_rows(labels, rows),
            has_labels=has,
            pairs=make_pairs(protocol, len(indices)),
            label_ids=sorted(source.label_names),
            label_names=dict(source.label_names),
            missing_label_files=[m for m in split_missing if m is not None],
        )
        out[name] = split
    return out


def split_subjects(data_config: dict, dim: int, split: str) -> list[str]:
    """Subject ids of ``split`` ("train", "val" or "test"), without reading any image.

    Raises
    ------
    ConfigError
        The split is not set, or its range does not fit the subject list.
    DataError
        The OASIS-layout subject list cannot be read.
    """
    cfg = validate_data_config(data_config, dim)
    if cfg["dataset"] == "oasis":
        root = Path(cfg["root"]).expanduser()
        subjects, where = oasis.read_subject_list(root), str(root / oasis.SUBJECT_LIST)
    else:
        subjects, where = phantom.subject_ids(cfg["phantom"]["n_subjects"], cfg["phantom"]["seed"]), "the phantom"
    return [subjects[i] for i in split_indices(cfg["splits"], split, len(subjects), where)]


def shared_subjects(config_a: dict, split_a: str, config_b: dict, split_b: str, dim: int) -> list[str] | None:
    """Subjects that are in split ``split_a`` of ``config_a`` and in split ``split_b`` of ``config_b``.

    Subjects are the same when their ids are: OASIS-layout folders by subject folder name
    (wherever the folders are), phantoms by name, which holds the seed and the index
    (:func:`data.phantom.subject_ids`; phantom subject i depends only on the seed and i, whatever
    the grid). So a phantom generated in memory and the same phantom written to disk by
    ``python -m data.phantom`` (read as an OASIS-layout folder) share their subjects.

    Returns
    -------
    list of str or None
        The shared subject ids, in ``split_b``'s order; None when either split cannot be listed
        (not set, or its subject list unreadable), so the answer is unknown.
    """
    with warnings.catch_warnings():  # overlapping ranges within one config were warned about on loading
        warnings.simplefilter("ignore")
        a, b = validate_data_config(config_a, dim), validate_data_config(config_b, dim)
        try:
            first = set(split_subjects(a, dim, split_a))
            second = split_subjects(b, dim, split_b)
        except (ConfigError, DataError):
            return None
    return [s for s in second if s in first]


def load_split(data_config: dict, dim: int, split: str) -> RegistrationSplit:
    """Load one split ("train", "val" or "test"); see :func:`load_splits`."""
    return load_splits(data_config, dim, (split,))[split]
