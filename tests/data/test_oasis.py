"""Reading the neurite-OASIS layout: shapes, dtypes, label handling and every error message."""

import gzip

import numpy as np
import pytest
import torch

from data import oasis
from tests.data.conftest import TINY_SHAPE
from utils.errors import DataError


def _error(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kw)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("dim", [2, 3])
def test_reads_tiny_dataset(tmp_path, make_dataset, dim):
    root = make_dataset(tmp_path / "d", dim, 3)
    scheme = "seg24" if dim == 2 else "seg35"
    subjects = oasis.read_subject_list(root)
    assert subjects == ["SUBJ_000", "SUBJ_001", "SUBJ_002"]
    images, labels, missing = oasis.read_subjects(root, subjects, dim, scheme)
    shape = (16, 20) if dim == 2 else (8, 10, 12)
    assert images.shape == (3, 1, *shape) and images.dtype == torch.float32
    assert labels.shape == (3, 1, *shape) and labels.dtype == torch.int16
    assert missing == [None, None, None]
    assert 0 <= images.min() and images.max() <= 1
    top = 24 if dim == 2 else 35
    assert int(labels.min()) >= 0 and int(labels.max()) <= top


def test_float_labels_cast_and_trailing_axis_dropped(tmp_path, save):
    path = tmp_path / "slice_seg24.nii.gz"
    save(path, np.array([[0.0, 3.0], [24.0, 7.0]])[..., None])
    out = oasis.read_labels(path, 2, "seg24")
    assert out.dtype == np.int16 and out.shape == (2, 2)
    assert out.tolist() == [[0, 3], [24, 7]]


def test_missing_label_file_gives_no_labels(tiny2d):
    (tiny2d / "SUBJ_001" / "slice_seg24.nii.gz").unlink()
    _, labels, missing = oasis.read_subjects(tiny2d, ["SUBJ_000", "SUBJ_001"], 2, "seg24")
    assert missing[0] is None and missing[1].name == "slice_seg24.nii.gz"
    assert int(labels[1].abs().sum()) == 0
    msg = _error(oasis.read_subjects, tiny2d, ["SUBJ_000", "SUBJ_001"], 2, "seg24",
                 require_labels=True)
    assert "SUBJ_001/slice_seg24.nii.gz" in msg and "require_labels" in msg


def test_a_label_map_of_background_only_is_warned_about(tiny2d, save):
    save(tiny2d / "SUBJ_001" / "slice_seg24.nii.gz", np.zeros(TINY_SHAPE[2] + (1,)))
    with pytest.warns(UserWarning, match="SUBJ_001/slice_seg24.nii.gz holds background only"):
        _, labels, missing = oasis.read_subjects(tiny2d, ["SUBJ_000", "SUBJ_001"], 2, "seg24")
    assert missing == [None, None]  # still a label map: the warning is what tells


def test_missing_root_and_subject_list(tmp_path):
    msg = _error(oasis.read_subject_list, tmp_path / "nowhere")
    assert "nowhere" in msg and "data_config.root" in msg
    msg = _error(oasis.read_subject_list, tmp_path)
    assert "subjects.txt" in msg and str(tmp_path) in msg


def test_subject_list_problems(tmp_path):
    (tmp_path / "subjects.txt").write_text("\n\n")
    assert "is empty" in _error(oasis.read_subject_list, tmp_path)
    (tmp_path / "subjects.txt").write_text("A\nB\n\nA\n")
    msg = _error(oasis.read_subject_list, tmp_path)
    assert "A twice" in msg and "lines 1 and 4" in msg
    (tmp_path / "subjects.txt").write_text("A\n../B\n")
    assert "line 2" in _error(oasis.read_subject_list, tmp_path)
    # Blank lines are skipped; surrounding whitespace is ignored.
    (tmp_path / "subjects.txt").write_text(" A \nB\n\n")
    assert oasis.read_subject_list(tmp_path) == ["A", "B"]


def test_missing_subject_folder_and_image(tiny2d):
    msg = _error(oasis.read_subjects, tiny2d, ["SUBJ_000", "GHOST"], 2, "seg24")
    assert "GHOST" in msg and "subjects.txt" in msg
    (tiny2d / "SUBJ_002" / "slice_norm.nii.gz").unlink()
    msg = _error(oasis.read_subjects, tiny2d, ["SUBJ_002"], 2, "seg24")
    assert "SUBJ_002/slice_norm.nii.gz" in msg and "missing" in msg


def test_wrong_shapes(tmp_path, make_subject):
    make_subject(tmp_path, "A", 2)
    make_subject(tmp_path, "B", 2, shape=(16, 22))
    msg = _error(oasis.read_subjects, tmp_path, ["A", "B"], 2, "seg24")
    assert "B/slice_norm.nii.gz" in msg and "(16, 22)" in msg and "(16, 20)" in msg
    # A 3D volume where a 2D slice is expected.
    make_subject(tmp_path, "C", 3)
    msg = _error(oasis.read_image, tmp_path / "C" / "aligned_norm.nii.gz", 2)
    assert "aligned_norm.nii.gz" in msg and "(8, 10, 12)" in msg and "2D" in msg


def test_label_shape_must_match_image(tmp_path, make_subject, save):
    make_subject(tmp_path, "A", 2, schemes=())
    save(tmp_path / "A" / "slice_seg24.nii.gz", np.ones((16, 18, 1)))
    msg = _error(oasis.read_subjects, tmp_path, ["A"], 2, "seg24")
    assert "A/slice_seg24.nii.gz" in msg and "(16, 18)" in msg


def test_nan_and_out_of_range_intensities(tmp_path, save):
    img = np.full((4, 5, 1), 0.5)
    img[1, 2, 0] = np.nan
    save(tmp_path / "nan.nii.gz", img)
    msg = _error(oasis.read_image, tmp_path / "nan.nii.gz", 2)
    assert "nan.nii.gz" in msg and "NaN" in msg
    save(tmp_path / "bytes.nii.gz", np.full((4, 5, 1), 200.0))
    msg = _error(oasis.read_image, tmp_path / "bytes.nii.gz", 2)
    assert "bytes.nii.gz" in msg and "[0, 1]" in msg
    # Rounding just outside [0, 1] is clipped, not an error.
    save(tmp_path / "ok.nii.gz", np.full((4, 5, 1), 1.0004))
    assert oasis.read_image(tmp_path / "ok.nii.gz", 2).max() == 1.0


def test_non_integer_and_out_of_scheme_labels(tmp_path, save):
    save(tmp_path / "frac.nii.gz", np.array([[0.0, 2.5]])[..., None])
    msg = _error(oasis.read_labels, tmp_path / "frac.nii.gz", 2, "seg24")
    assert "frac.nii.gz" in msg and "non-integer" in msg and "2.5" in msg
    save(tmp_path / "big.nii.gz", np.array([[0, 30]], dtype=np.int16)[..., None])
    msg = _error(oasis.read_labels, tmp_path / "big.nii.gz", 2, "seg24")
    assert "big.nii.gz" in msg and "0..24" in msg and "label_scheme" in msg


def test_damaged_file(tmp_path):
    path = tmp_path / "slice_norm.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti file at all" * 20)[:40])
    msg = _error(oasis.read_image, path, 2)
    assert "slice_norm.nii.gz" in msg and "damaged" in msg


# --- the real release files (skipped where ../shared/oasis_samples is absent) ----------------

def test_real_2d_samples(oasis_samples):
    root = oasis_samples / "2d"
    subjects = oasis.read_subject_list(root)
    assert subjects == ["OASIS_OAS1_0001_MR1", "OASIS_OAS1_0002_MR1", "VXM_TESTSCAN"]
    images, labels, missing = oasis.read_subjects(root, subjects, 2, "seg24")
    assert images.shape == (3, 1, 160, 192) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and images.max() > 0.5
    assert labels.dtype == torch.int16
    # OASIS_OAS1_0002_MR1 has no seg24 file in the samples.
    assert [m is None for m in missing] == [True, False, True]
    assert missing[1].name == "slice_seg24.nii.gz"
    present = set(torch.unique(labels[0]).tolist())
    assert present <= set(range(25)) and len(present) >= 20
    _, seg4, missing4 = oasis.read_subjects(root, subjects, 2, "seg4")
    assert missing4 == [None] * 3
    assert set(torch.unique(seg4).tolist()) == {0, 1, 2, 3, 4}


def test_real_3d_samples(oasis_samples):
    root = oasis_samples / "3d"
    images, labels, missing = oasis.read_subjects(root, ["VXM_TESTSCAN", "OASIS_OAS1_0001_MR1"],
                                                  3, "seg35")
    assert images.shape == (2, 1, 160, 192, 224) and images.dtype == torch.float32
    assert labels.dtype == torch.int16
    assert set(torch.unique(labels[0]).tolist()) == set(range(36))
    assert missing[0] is None and missing[1].name == "aligned_seg35.nii.gz"
