"""The synthetic brain phantom: form, determinism, anatomy, difficulty, and its on-disk layout."""

import time

import numpy as np
import pytest
import torch

from data import oasis
from data.labels import SCHEMES, label_id
from data.phantom import generate_phantom, main, phantom_label_names, write_phantom_dataset
from utils.errors import ConfigError, UserError


def _mean_dice(a: torch.Tensor, b: torch.Tensor, label_ids) -> float:
    """Mean Dice over labels present in either map (background excluded)."""
    k = max(label_ids) + 1
    joint = torch.bincount((a.long() * k + b.long()).flatten(), minlength=k * k).view(k, k)
    ids = torch.tensor(list(label_ids))
    total = joint.sum(1)[ids] + joint.sum(0)[ids]
    dice = 2 * joint.diagonal()[ids] / total.clamp_min(1)
    return float(dice[total > 0].mean())


@pytest.fixture(scope="module")
def subjects_2d():
    return generate_phantom(16, 2)


def test_form_2d(subjects_2d):
    images, labels = subjects_2d
    assert images.shape == (16, 1, 160, 192) and images.dtype == torch.float32
    assert labels.shape == (16, 1, 160, 192) and labels.dtype == torch.int16
    assert images.min() >= 0 and images.max() <= 1
    assert float(images[labels == 0].mean()) < 0.02  # skull-stripped: dark background


def test_form_3d():
    images, labels = generate_phantom([0, 1], 3, shape=(40, 48, 56))
    assert images.shape == (2, 1, 40, 48, 56) and labels.dtype == torch.int16
    present = set(torch.unique(labels).tolist())
    assert present <= set(range(36)) and len(present) > 25
    # Structures only the 3D volume shows are there.
    for name in ("L-cerebellum-cortex", "brain-stem", "R-thalamus"):
        assert label_id("seg35", name) in present, name


def test_label_sets_match_the_release_schemes(subjects_2d):
    _, labels = subjects_2d
    assert list(phantom_label_names("seg24")) == list(range(1, 25))
    assert list(phantom_label_names("seg35")) == list(range(1, 36))
    assert phantom_label_names("seg4") == SCHEMES["seg4"]
    present = set(torch.unique(labels).tolist())
    assert present == set(range(25))  # every seg24 label appears in some of the 16 slices


def test_seg4_is_the_tissue_map_of_seg24():
    _, fine = generate_phantom([3], 2, label_scheme="seg24")
    _, tissue = generate_phantom([3], 2, label_scheme="seg4")
    assert set(torch.unique(tissue).tolist()) == {0, 1, 2, 3, 4}
    for label, name in SCHEMES["seg24"].items():
        values = torch.unique(tissue[fine == label]).tolist()
        assert values in ([], [label_id("seg4", name)]), name


def test_deterministic_and_independent_of_batch():
    a_img, a_lab = generate_phantom([2, 5], 2, shape=(80, 96), seed=7)
    b_img, b_lab = generate_phantom(6, 2, shape=(80, 96), seed=7)
    assert torch.equal(a_img[1], b_img[5]) and torch.equal(a_lab[0], b_lab[2])
    c_img, _ = generate_phantom([2], 2, shape=(80, 96), seed=8)
    assert not torch.equal(c_img[0], a_img[0])


def test_subjects_differ_and_intensities_are_t1_like(subjects_2d):
    images, labels = subjects_2d
    assert not torch.equal(labels[0], labels[1])
    ids = {name: label_id("seg24", name) for name in
           ("L-cerebral-WM", "L-cortex", "L-lateral-ventricle")}
    mean = {name: float(images[labels == i].mean()) for name, i in ids.items()}
    # T1: white matter brighter than cortex, cortex brighter than CSF, at the release's scale.
    assert mean["L-cerebral-WM"] > mean["L-cortex"] + 0.08
    assert mean["L-cortex"] > mean["L-lateral-ventricle"] + 0.1
    assert 0.3 < mean["L-cerebral-WM"] < 0.5


def test_unregistered_dice_is_like_real_oasis(subjects_2d):
    """Consecutive pairs of 16 subjects (seed 0): measured mean Dice 0.476 (sd 0.080).

    Real OASIS pairs score about 0.44-0.55 before registration, so registration has room.
    """
    _, labels = subjects_2d
    scores = [_mean_dice(labels[i], labels[i + 1], range(1, 25)) for i in range(15)]
    assert 0.4 < np.mean(scores) < 0.6
    assert np.mean(scores) == pytest.approx(0.476, abs=0.01)
    assert min(scores) > 0.3


def test_unregistered_dice_3d():
    """Four quarter-resolution volumes: measured mean Dice 0.455 (consecutive pairs, 35 labels)."""
    _, labels = generate_phantom(4, 3, shape=(40, 48, 56))
    scores = [_mean_dice(labels[i], labels[i + 1], range(1, 36)) for i in range(3)]
    assert 0.35 < np.mean(scores) < 0.6
    assert np.mean(scores) == pytest.approx(0.455, abs=0.01)


def test_fast():
    start = time.perf_counter()
    generate_phantom(64, 2)
    # About 0.7 s on 2 idle cores; the bound leaves room for a busy CI machine.
    assert time.perf_counter() - start < 15


def test_bad_arguments():
    with pytest.raises(ConfigError, match="2 or 3"):
        generate_phantom(1, 4)
    with pytest.raises(ConfigError, match="must have 2 axes"):
        generate_phantom(1, 2, shape=(16, 16, 16))
    with pytest.raises(ConfigError, match="not available in 2D"):
        generate_phantom(1, 2, label_scheme="seg35")


@pytest.mark.parametrize("dim, shape", [(2, (32, 40)), (3, (16, 20, 24))])
def test_written_dataset_reads_back_through_the_oasis_loader(tmp_path, dim, shape):
    root = write_phantom_dataset(tmp_path / "ph", dim, 3, shape=shape, seed=1)
    subjects = oasis.read_subject_list(root)
    assert subjects == ["PHANTOM_s1_0000", "PHANTOM_s1_0001", "PHANTOM_s1_0002"]  # seed 0 has no "s0_"
    for scheme in (("seg24" if dim == 2 else "seg35"), "seg4"):
        images, labels, missing = oasis.read_subjects(root, subjects, dim, scheme)
        ref_images, ref_labels = generate_phantom(3, dim, shape=shape, seed=1, label_scheme=scheme)
        assert missing == [None] * 3
        assert torch.equal(labels, ref_labels) and torch.allclose(images, ref_images)
    with pytest.raises(UserError, match="already exists"):
        write_phantom_dataset(root, dim, 3, shape=shape, seed=1)


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "ph"), "--dim", "2", "--n", "6",
                 "--shape", "32", "40"]) == 0
    out = capsys.readouterr().out
    assert "wrote 6 2D phantom subjects" in out and '"dataset": "oasis"' in out
    assert '"splits"' in out
    assert len(oasis.read_subject_list(tmp_path / "ph")) == 6
