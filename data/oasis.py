"""Reading the neurite-OASIS layout: ``subjects.txt`` plus one folder per subject.

::

    root/subjects.txt                 one subject folder name per line (splits index these lines)
    root/<subject>/slice_norm.nii.gz  2D image, 160 x 192 x 1, intensities in [0, 1]
    root/<subject>/slice_seg24.nii.gz 2D labels (seg24), stored as floats in the release
    root/<subject>/slice_seg4.nii.gz  2D labels (seg4)
    root/<subject>/aligned_norm.nii.gz, aligned_seg35.nii.gz, aligned_seg4.nii.gz   (3D)

Every problem with the files is a :class:`~utils.errors.DataError` whose one-line message names
the file and says what to do.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from data.labels import SCHEMES
from data.nifti import drop_trailing_singletons, integral_labels
from utils.errors import DataError

SUBJECT_LIST = "subjects.txt"
_PREFIX = {2: "slice", 3: "aligned"}
_RANGE_TOLERANCE = 1e-3  # intensities this far outside [0, 1] are clipped, further is an error


def image_file(dim: int) -> str:
    """File name of a subject's image: ``slice_norm.nii.gz`` (2D) or ``aligned_norm.nii.gz``."""
    return f"{_PREFIX[dim]}_norm.nii.gz"


def label_file(dim: int, scheme: str) -> str:
    """File name of a subject's label map, e.g. ``slice_seg24.nii.gz`` or ``aligned_seg35.nii.gz``."""
    return f"{_PREFIX[dim]}_{scheme}.nii.gz"


def read_subject_list(root) -> list[str]:
    """Subject folder names from ``root/subjects.txt``, in line order (blank lines skipped).

    Raises
    ------
    DataError
        The folder or the list is missing, empty, or lists a name twice or with a path in it.
    """
    root = Path(root).expanduser()
    path = root / SUBJECT_LIST
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; set data_config.root to the folder "
                        f"holding {SUBJECT_LIST} (python -m data.download fetches the release)")
    if not path.is_file():
        raise DataError(f"{path} is missing; data_config.root must be the folder holding "
                        f"{SUBJECT_LIST} (one subject folder name per line)")
    subjects, seen = [], {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if "/" in name or "\\" in name or name in (".", ".."):
            raise DataError(f"{path} line {number}: {name!r} is not a folder name; list one "
                            f"subject folder of {root} per line")
        if name in seen:
            raise DataError(f"{path} lists {name} twice (lines {seen[name]} and {number}); "
                            f"remove the duplicate")
        seen[name] = number
        subjects.append(name)
    if not subjects:
        raise DataError(f"{path} is empty; list one subject folder name per line")
    return subjects


def _load_array(path: Path, dim: int) -> np.ndarray:
    """Read a NIfTI file as an array with ``dim`` axes (trailing singleton axes dropped)."""
    if not path.is_file():
        raise DataError(f"missing file {path}; re-download or re-extract the dataset")
    try:
        arr = np.asanyarray(nib.load(path).dataobj)
    except Exception as err:  # nibabel raises many kinds of errors for damaged files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"cannot read {path} ({reason}); the file is damaged, re-download "
                        f"the dataset") from None
    arr = drop_trailing_singletons(arr, dim)
    if arr.ndim != dim:
        raise DataError(f"{path} has shape {arr.shape}; expected a {dim}D "
                        f"{'slice (H, W) or (H, W, 1)' if dim == 2 else 'volume (D, H, W)'} "
                        f"(is the config's dimension right?)")
    return arr


def read_image(path, dim: int) -> np.ndarray:
    """Read an intensity image as float32, checking it is finite and in [0, 1].

    Parameters
    ----------
    path : path-like
        A ``*_norm.nii.gz`` file.
    dim : int
        2 or 3.

    Returns
    -------
    numpy.ndarray
        float32 array with ``dim`` axes, clipped to [0, 1] (values within 1e-3 outside it are
        rounding and are clipped; larger excursions are an error).
    """
    path = Path(path)
    arr = _load_array(path, dim).astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise DataError(f"{path} has {bad} NaN or infinite intensities; replace the file "
                        f"(re-download, or fix the preprocessing that wrote it)")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise DataError(f"{path} has intensities in [{lo:.4g}, {hi:.4g}]; the loader expects "
                        f"[0, 1] as in neurite-OASIS, rescale the image")
    return np.clip(arr, 0.0, 1.0, out=arr)


def read_labels(path, dim: int, scheme: str) -> np.ndarray:
    """Read a label map as int16, checking its values are integers of ``scheme`` (0 = background).

    Float-stored labels (the 2D release stores them as float64) are cast after checking that
    every value is integral.
    """
    path = Path(path)
    arr = integral_labels(_load_array(path, dim), str(path))
    top = max(SCHEMES[scheme])
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > top:
        raise DataError(f"{path} has label values {lo}..{hi} outside 0..{top} of {scheme}; is "
                        f"data_config.label_scheme right for this file?")
    if hi == 0:  # counts as labelled: every pair with it would score Dice 0, without a word
        warnings.warn(f"{path} holds background only (no label of {scheme}); every pair with this subject "
                      "scores Dice 0 on the other map's labels. Is the file damaged?", stacklevel=2)
    return arr.astype(np.int16)


def _read_subject(root: Path, subject: str, dim: int, scheme: str, require_labels: bool):
    folder = root / subject
    if not folder.is_dir():
        raise DataError(f"subject folder {folder} is missing (listed in {root / SUBJECT_LIST}); "
                        f"re-extract the dataset or remove the line")
    image = read_image(folder / image_file(dim), dim)
    labels_path = folder / label_file(dim, scheme)
    if require_labels and not labels_path.is_file():
        raise DataError(f"missing label file {labels_path} (data_config.require_labels is true); "
                        f"add it, set require_labels to false, or choose another label_scheme")
    labels = read_labels(labels_path, dim, scheme) if labels_path.is_file() else None
    if labels is not None and labels.shape != image.shape:
        raise DataError(f"{labels_path} has shape {labels.shape} but its image has "
                        f"{image.shape}; the two must match")
    return image, labels


def read_subjects(root, subjects: list[str], dim: int, scheme: str, require_labels: bool = False,
                  workers: int | None = None):
    """Read images and label maps of ``subjects`` into preallocated tensors.

    Parameters
    ----------
    root : path-like
        Folder holding ``subjects.txt`` and the subject folders.
    subjects : list of str
        Folder names to read, in output order.
    dim : int
        2 or 3.
    scheme : str
        Label scheme whose files to read ("seg24", "seg35" or "seg4").
    require_labels : bool
        Make a missing label file an error (otherwise that subject is read without labels).
    workers : int, optional
        Reader threads (gzip decompression releases the GIL); default up to 8.

    Returns
    -------
    images : torch.Tensor
        ``(N, 1, *shape)`` float32 in [0, 1].
    labels : torch.Tensor
        ``(N, 1, *shape)`` int16 (zeros where a subject has no label file).
    missing : list of pathlib.Path or None
        Per subject, the label file that was absent (None when it was read).

    Raises
    ------
    DataError
        A missing folder or image, a damaged file, a shape that differs from the first subject's,
        NaN intensities or non-integer labels.
    """
    root = Path(root).expanduser()
    images = labels = None
    missing: list[Path | None] = [None] * len(subjects)
    shape = None

    def store(row: int, image: np.ndarray, label: np.ndarray | None) -> None:
        nonlocal images, labels, shape
        if shape is None:
            shape = image.shape  # the first subject read fixes the dataset's shape
            images = torch.empty((len(subjects), 1, *shape), dtype=torch.float32)
            labels = torch.zeros((len(subjects), 1, *shape), dtype=torch.int16)
        if image.shape != shape:
            path = root / subjects[row] / image_file(dim)
            raise DataError(f"{path} has shape {image.shape} but {subjects[0]} has {shape}; all "
                            f"subjects must share one shape")
        images[row, 0] = torch.from_numpy(image)
        if label is None:
            missing[row] = root / subjects[row] / label_file(dim, scheme)
        else:
            labels[row, 0] = torch.from_numpy(label)

    workers = workers or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(subjects), desc=f"reading {root.name}", unit="subject", leave=False,
               disable=len(subjects) < 50 and dim == 2)
    pending = {}
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        try:
            for row in range(len(subjects)):
                # Read a bounded window ahead (memory stays small, an error stops early) and
                # consume in order, so the first subject fixes the shape deterministically.
                for ahead in range(row, min(row + 2 * workers, len(subjects))):
                    if ahead not in pending:
                        pending[ahead] = pool.submit(_read_subject, root, subjects[ahead], dim,
                                                     scheme, require_labels)
                store(row, *pending.pop(row).result())
                bar.update()
        finally:
            for future in pending.values():
                future.cancel()
    return images, labels, missing
