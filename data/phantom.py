"""Synthetic brain-like phantom subjects (2D and 3D) in the form of neurite-OASIS.

Each subject is an analytic 3D anatomy in the release's template frame (millimetres, x towards
the subject's left, y inferior, z anterior; the 160 x 192 x 224 mm field of view of
``aligned_norm``), sampled on the requested grid. A 2D subject is the coronal plane of the same
anatomy at the release's slice (index 109 of the last axis), so 2D and 3D share one code path,
exactly as the release derives its slices.

The anatomy: a cerebrum with a folded cortical ribbon over white matter, sulci and an
interhemispheric fissure above the corpus callosum; lateral, inferior-lateral, third and fourth
ventricles; thalamus, caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC,
choroid plexus and a vessel on both sides; brain stem and cerebellum. Structures carry their
neurite-OASIS label ids (seg24 in 2D, seg35 in 3D, or seg4 tissue classes), so metrics, pairs and
the loader treat phantom and OASIS subjects alike.

The anatomy and its random variation are drawn in :mod:`data.phantom_anatomy`; this module
makes subjects from it, maps them to label schemes and writes them in the neurite layout.

Per subject (deterministic in ``(seed, index)`` and independent of which other subjects are made):
a small affine, a smooth random deformation, jittered structure positions and sizes, ventricle
enlargement, a random gyral pattern, and T1-like intensities at the release's scale (white matter
about 0.38, cortex 0.25, CSF under 0.1) with partial-volume blur, a multiplicative bias field and
mild noise. Two phantom subjects overlap with a mean Dice of about 0.48 (2D, seg24) or 0.46 (3D,
seg35) before registration, like real OASIS pairs (0.44-0.55; measured in
``tests/data/test_phantom.py``), so registration has real work to do.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from data.labels import SCHEMES, check_scheme, default_scheme, label_id
from data.pairs import default_splits
from data.phantom_anatomy import (CHUNK_POINTS, STRUCTURE_NAMES, draw_subjects, grid_points,
                                  subject_params)
from utils.errors import ConfigError, UserError

DEFAULT_SHAPE = {2: (160, 192), 3: (160, 192, 224)}


def phantom_label_names(label_scheme: str) -> dict[int, str]:
    """Label ids (and names) that the phantom draws in ``label_scheme``, background excluded."""
    ids = {label_id(label_scheme, name) for name in STRUCTURE_NAMES[1:] if name != "sulcal-CSF"}
    return {i: SCHEMES[label_scheme][i] for i in sorted(ids - {0})}


def _label_lut(scheme: str) -> torch.Tensor:
    """Map from the phantom's structure indices to ``scheme`` ids (int16)."""
    return torch.tensor([0 if n in ("background", "sulcal-CSF") else label_id(scheme, n)
                         for n in STRUCTURE_NAMES], dtype=torch.int16)


def _check(dim: int, shape) -> tuple[int, ...]:
    """The grid shape to use (default: the release's), after checking ``dim`` and ``shape``."""
    if dim not in DEFAULT_SHAPE:
        raise ConfigError(f"phantom dim must be 2 or 3, got {dim!r}")
    shape = tuple(int(s) for s in (shape or DEFAULT_SHAPE[dim]))
    if len(shape) != dim or min(shape) < 2:
        raise ConfigError(f"phantom shape {list(shape)} must have {dim} axes of at least 2")
    return shape


def _generate(indices, dim: int, shape, seed: int):
    """Images and structure-index maps of the given subjects (see :func:`generate_phantom`)."""
    shape = _check(dim, shape)
    indices = list(range(indices)) if isinstance(indices, int) else [int(i) for i in indices]
    grid = grid_points(shape)
    images = torch.empty((len(indices), 1, *shape), dtype=torch.float32)
    structures = torch.empty((len(indices), 1, *shape), dtype=torch.int64)
    batch = max(1, CHUNK_POINTS // grid.shape[0])  # several 2D slices at once, 3D one by one
    for start in range(0, len(indices), batch):
        rows = slice(start, start + batch)
        params = [subject_params(seed, i) for i in indices[rows]]
        images[rows], structures[rows] = draw_subjects(grid, shape, params)
    return images, structures


def generate_phantom(indices, dim: int, shape=None, seed: int = 0,
                     label_scheme: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Make phantom subjects.

    Parameters
    ----------
    indices : int or sequence of int
        Subject indices (``n`` means ``range(n)``). Subject ``i`` depends only on ``(seed, i)``.
    dim : int
        2 (coronal slices) or 3 (volumes).
    shape : sequence of int, optional
        Grid over the fixed field of view; default 160x192 (2D) or 160x192x224 (3D).
    seed : int
        Dataset seed.
    label_scheme : str, optional
        "seg24"/"seg35" (default for 2D/3D) or "seg4".

    Returns
    -------
    images : torch.Tensor
        ``(N, 1, *shape)`` float32 in [0, 1].
    labels : torch.Tensor
        ``(N, 1, *shape)`` int16 label maps with neurite-OASIS ids of ``label_scheme``.
    """
    shape = _check(dim, shape)
    scheme = check_scheme(label_scheme or default_scheme(dim), dim, "phantom label_scheme")
    images, structures = _generate(indices, dim, shape, seed)
    return images, _label_lut(scheme)[structures]


def subject_ids(n_subjects: int, seed: int = 0) -> list[str]:
    """Names of the phantom subjects, as written to ``subjects.txt``.

    ``PHANTOM_0000``, ... for seed 0, ``PHANTOM_s<seed>_0000``, ... for any other seed: subject i
    of one seed is not subject i of another, and written to disk they are told apart by name
    (the check of evaluation subjects against training subjects compares folder names).
    """
    prefix = "PHANTOM_" if seed == 0 else f"PHANTOM_s{seed}_"
    return [f"{prefix}{i:04d}" for i in range(n_subjects)]


def write_phantom_dataset(out_dir, dim: int, n_subjects: int, shape=None, seed: int = 0) -> Path:
    """Write phantom subjects in the neurite-OASIS layout, readable by :mod:`data.oasis`.

    Parameters
    ----------
    out_dir : path-like
        Folder to create (may exist if empty of subject folders we would overwrite).
    dim, n_subjects, shape, seed
        As for :func:`generate_phantom`.

    Returns
    -------
    pathlib.Path
        ``out_dir``, holding ``subjects.txt`` and one folder per subject with
        ``slice_norm``/``slice_seg24``/``slice_seg4`` (2D, shape ``H x W x 1`` like the release) or
        ``aligned_norm``/``aligned_seg35``/``aligned_seg4`` (3D) ``.nii.gz`` files.
    """
    import nibabel as nib  # only needed for writing

    shape = _check(dim, shape)
    out_dir = Path(out_dir)
    ids = subject_ids(n_subjects, seed)
    clash = [i for i in ids if (out_dir / i).exists()]
    if clash:
        raise UserError(f"{out_dir / clash[0]} already exists; choose an empty --out folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "slice" if dim == 2 else "aligned"

    def save(arr: np.ndarray, path: Path) -> None:
        # The release stores 2D slices as H x W x 1 (and 2D labels as floats).
        nib.save(nib.Nifti1Image(arr[..., None] if dim == 2 else arr, np.eye(4)), path)

    for i, sid in enumerate(ids):
        folder = out_dir / sid
        folder.mkdir()
        image, structures = _generate([i], dim, shape, seed)
        save(image[0, 0].numpy(), folder / f"{prefix}_norm.nii.gz")
        for scheme in (default_scheme(dim), "seg4"):
            labels = _label_lut(scheme)[structures[0, 0]].numpy()
            save(labels.astype(np.float32) if dim == 2 else labels,
                 folder / f"{prefix}_{scheme}.nii.gz")
    (out_dir / "subjects.txt").write_text("".join(f"{sid}\n" for sid in ids))
    return out_dir


def main(argv=None) -> int:
    """CLI: ``python -m data.phantom --out DIR --dim 2 --n 50 [--shape H W] [--seed 0]``."""
    parser = argparse.ArgumentParser(description="Write phantom subjects in the neurite-OASIS "
                                                 "layout (subjects.txt + one folder per subject).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dim", type=int, choices=(2, 3), default=2)
    parser.add_argument("--n", type=int, default=50, help="number of subjects")
    parser.add_argument("--shape", type=int, nargs="+", help="grid shape (default: release shape)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = write_phantom_dataset(args.out, args.dim, args.n, args.shape, args.seed)
    except UserError as err:
        print(f"error: {err}")
        return 2
    cfg = {"dataset": "oasis", "root": str(Path(root).resolve()),
           "label_scheme": default_scheme(args.dim)}
    if 6 <= args.n < 414:  # the published ranges need 414 subjects
        cfg["splits"] = default_splits(args.n)
    print(f"wrote {args.n} {args.dim}D phantom subjects to {root}")
    print(f'"data_config": {json.dumps(cfg)}')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
