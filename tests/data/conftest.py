"""Fixtures for the data tests: tiny neurite-layout folders written with nibabel, real samples."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

TINY_SHAPE = {2: (16, 20), 3: (8, 10, 12)}


def _samples_dir() -> Path:
    default = Path(__file__).resolve().parents[2].parent / "shared" / "oasis_samples"
    return Path(os.environ.get("FNOREG_OASIS_SAMPLES", default))


def save_nifti(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.eye(4)), path)


def write_subject(root: Path, name: str, dim: int, seed: int = 0, schemes=("seg24", "seg4"),
                  shape=None, image=None) -> None:
    """Write one subject in the release's format (2D: H x W x 1, float64 labels)."""
    shape = tuple(shape or TINY_SHAPE[dim])
    rng = np.random.default_rng(seed)
    prefix = "slice" if dim == 2 else "aligned"
    img = rng.uniform(0, 1, size=shape) if image is None else image
    save_nifti(root / name / f"{prefix}_norm.nii.gz", img[..., None] if dim == 2 else img)
    for scheme in schemes:
        top = {"seg4": 4, "seg24": 24, "seg35": 35}[scheme]
        lab = rng.integers(0, top + 1, size=shape)
        # The 2D release stores labels as float64, the 3D one as int16.
        lab = lab[..., None].astype(np.float64) if dim == 2 else lab.astype(np.int16)
        save_nifti(root / name / f"{prefix}_{scheme}.nii.gz", lab)


def write_dataset(root: Path, dim: int, n: int, **kw) -> Path:
    """A neurite-layout folder with ``n`` subjects SUBJ_000.. and its subjects.txt."""
    names = [f"SUBJ_{i:03d}" for i in range(n)]
    schemes = kw.pop("schemes", ("seg24", "seg4") if dim == 2 else ("seg35", "seg4"))
    for i, name in enumerate(names):
        write_subject(root, name, dim, seed=i, schemes=schemes, **kw)
    (root / "subjects.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture
def make_dataset():
    """Factory: ``make_dataset(root, dim, n, **kw)`` writes a tiny neurite-layout folder."""
    return write_dataset


@pytest.fixture
def make_subject():
    """Factory: ``make_subject(root, name, dim, ...)`` writes one subject folder."""
    return write_subject


@pytest.fixture
def save():
    """Factory: ``save(path, array)`` writes a NIfTI file."""
    return save_nifti


@pytest.fixture
def tiny2d(tmp_path) -> Path:
    return write_dataset(tmp_path / "oasis2d", 2, 6)


@pytest.fixture
def tiny3d(tmp_path) -> Path:
    return write_dataset(tmp_path / "oasis3d", 3, 4)


@pytest.fixture
def oasis_samples() -> Path:
    path = _samples_dir()
    if not (path / "2d" / "subjects.txt").is_file():
        pytest.skip(f"real neurite-OASIS samples not found at {path} (set FNOREG_OASIS_SAMPLES)")
    return path
