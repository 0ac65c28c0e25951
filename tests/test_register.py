"""register.py: NIfTI round trips (affine, shapes, vector layout), resampling, label maps, errors."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from data.phantom import generate_phantom
from data.resize import resize_images
from engine import experiment as xp
from engine.checkpoint import save_weights
from engine.config import resolve_config
from engine.registration_io import register_main
from models import build_model
from utils.cli import run_cli
from utils.fileio import write_json

REPO = Path(__file__).resolve().parents[1]
MODEL = {2: {"hidden_channels": 4, "projection_channels": 8, "n_layers": 1, "n_modes": [8, 8]},
         3: {"hidden_channels": 3, "projection_channels": 6, "n_layers": 1, "n_modes": [6, 6, 6]}}
AFFINE = np.array([[0.0, 0.0, 1.2, -20.0], [-0.8, 0.0, 0.0, 31.5], [0.0, 1.0, 0.0, -7.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def exp_root(tmp_path_factory):
    """Experiment 1 in 2D and in 3D: an untrained zero-head FNOReg, i.e. the identity registration."""
    root = tmp_path_factory.mktemp("experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FNOREG_EXPERIMENTS_DIR", str(root))
        for dim in (2, 3):
            config = resolve_config({"model_name": "fnoreg", "model_config": MODEL[dim]}, dim)
            _, folder = xp.create_experiment(dim)
            write_json(folder / "config.json", config)
            save_weights(folder, build_model("fnoreg", config["model_config"], dim), 0, [32, 40, 48][:dim])
        yield root


@pytest.fixture(scope="module")
def subjects():
    """Two phantom subjects per dimension: images (float32) and label maps (int16)."""
    out = {}
    for dim, shape in ((2, (32, 40)), (3, (20, 24, 28))):
        images, labels = generate_phantom([0, 1], dim, shape, seed=4)
        out[dim] = (images[:, 0].numpy(), labels[:, 0].numpy().astype(np.int16))
    return out


def save(path, array, affine=AFFINE):
    nib.save(nib.Nifti1Image(array, affine), path)
    return str(path)


def register(*argv):
    return run_cli(register_main, ["--gpu_num", "-1", *map(str, argv)])


def load(path):
    image = nib.load(path)
    return np.asanyarray(image.dataobj), image


def test_round_trip_2d_keeps_affine_shape_and_labels(exp_root, subjects, tmp_path, capsys):
    images, labels = subjects[2]
    # As in the 2D release: H x W x 1 slices, labels stored as float.
    moving = save(tmp_path / "m.nii.gz", images[0][..., None], np.eye(4))
    fixed = save(tmp_path / "f.nii.gz", images[1][..., None])
    moving_seg = save(tmp_path / "ms.nii.gz", labels[0][..., None].astype(np.float64), np.eye(4))
    fixed_seg = save(tmp_path / "fs.nii.gz", labels[1][..., None])
    out = tmp_path / "out"
    fixed_affine = nib.load(fixed).affine  # AFFINE as stored (float32 in the header)
    np.testing.assert_allclose(fixed_affine, AFFINE, atol=1e-6)
    assert register("--exp_num", 1, "--dim", 2, "--moving", moving, "--fixed", fixed, "--moving_seg", moving_seg,
                    "--fixed_seg", fixed_seg, "--out", out) == 0
    for name in ("warped", "jacobian", "warped_seg"):
        data, image = load(out / f"{name}.nii.gz")
        assert data.shape == (32, 40, 1), name
        np.testing.assert_array_equal(image.affine, fixed_affine)
    warped, _ = load(out / "warped.nii.gz")
    np.testing.assert_allclose(warped[..., 0], images[0], atol=1e-5)  # identity model
    jac, _ = load(out / "jacobian.nii.gz")
    assert np.all(jac == 1)
    seg, seg_image = load(out / "warped_seg.nii.gz")
    assert seg.dtype.kind == "i"
    np.testing.assert_array_equal(seg[..., 0], labels[0])
    field, field_image = load(out / "displacement.nii.gz")
    assert field.shape == (32, 40, 1, 1, 2) and field_image.header.get_intent()[0] == "vector"
    np.testing.assert_array_equal(field_image.affine, fixed_affine)
    assert np.all(field == 0)
    summary = json.loads((out / "registration.json").read_text())
    assert summary["dice"] == summary["initial_dice"] < 1 and summary["folding_percent"] == 0
    assert summary["fixed_shape"] == [32, 40] and (out / "registration.png").stat().st_size > 0
    assert "Dice" in capsys.readouterr().out

    # Another pair into the same folder, without label maps: the first pair's warped_seg is gone.
    assert register("--exp_num", 1, "--dim", 2, "--moving", fixed, "--fixed", moving, "--out", out) == 0
    assert not (out / "warped_seg.nii.gz").exists() and (out / "warped.nii.gz").is_file()


def test_3d_moving_of_another_shape_is_resampled_onto_the_fixed_grid(exp_root, subjects, tmp_path, capsys):
    images, labels = subjects[3]
    fixed_image = resize_images(torch.from_numpy(images[1])[None, None], (30, 36, 42))[0, 0]
    moving = save(tmp_path / "m.nii.gz", images[0] * 100.0)  # outside [0, 1]: a notice, --rescale
    fixed = save(tmp_path / "f.nii.gz", fixed_image.numpy())
    moving_seg = save(tmp_path / "ms.nii.gz", labels[0])
    out = tmp_path / "out"
    assert register("--exp_num", 1, "--dim", 3, "--moving", moving, "--fixed", fixed, "--moving_seg", moving_seg,
                    "--out", out) == 0
    err = capsys.readouterr().err
    assert "resampled" in err and "--rescale" in err
    warped, image = load(out / "warped.nii.gz")
    expected = resize_images(torch.from_numpy(images[0] * 100.0)[None, None], (30, 36, 42))[0, 0].numpy()
    assert warped.shape == (30, 36, 42)
    np.testing.assert_allclose(warped, expected, rtol=1e-5, atol=1e-3)  # the moving image's own intensities
    np.testing.assert_array_equal(image.affine, nib.load(fixed).affine)
    field, _ = load(out / "displacement.nii.gz")
    assert field.shape == (30, 36, 42, 1, 3)
    seg, _ = load(out / "warped_seg.nii.gz")
    assert seg.shape == (30, 36, 42) and seg.dtype == np.int16 and set(np.unique(seg)) <= set(np.unique(labels[0]))
    assert register("--exp_num", 1, "--dim", 3, "--moving", moving, "--fixed", fixed, "--out", out, "--rescale") == 0
    assert "--rescale" not in capsys.readouterr().err


def one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("notice:")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("case, message", [
    ("3d_moving_with_dim_2", "(20, 24, 28), a 3D image, but --dim 2 needs a 2D image"),
    ("2d_files_with_dim_3", "a 2D image, but --dim 3 needs a 3D volume"),
    ("seg_shape", "a label map must match its image"),
    ("unknown_experiment", "experiment 7 not found"),
    ("missing_checkpoint", "no checkpoint for epoch 3"),
    ("missing_file", "does not exist"),
])
def test_errors_are_one_line_with_exit_2(exp_root, subjects, tmp_path, capsys, case, message):
    img2, img3 = subjects[2][0][0], subjects[3][0][0]
    f2 = save(tmp_path / "f2.nii.gz", img2[..., None])
    m3 = save(tmp_path / "m3.nii.gz", img3)
    args = {
        "3d_moving_with_dim_2": ["--dim", 2, "--moving", m3, "--fixed", f2],
        "2d_files_with_dim_3": ["--dim", 3, "--moving", f2, "--fixed", f2],
        "seg_shape": ["--dim", 2, "--moving", f2, "--fixed", f2, "--moving_seg", save(tmp_path / "s.nii.gz",
                                                                                    np.zeros((16, 20), np.int16))],
        "unknown_experiment": ["--dim", 2, "--moving", f2, "--fixed", f2, "--exp_num", 7],
        "missing_checkpoint": ["--dim", 2, "--moving", f2, "--fixed", f2, "--ckpt_epoch", 3],
        "missing_file": ["--dim", 2, "--moving", tmp_path / "nope.nii.gz", "--fixed", f2],
    }[case]
    argv = (["--exp_num", 1] if "--exp_num" not in args else []) + args + ["--out", tmp_path / "out"]
    with pytest.raises(SystemExit) as exc:
        register(*argv)
    assert exc.value.code == 2
    assert message in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_script_reports_mismatched_dimensions_in_one_line(subjects, tmp_path):
    moving = save(tmp_path / "m.nii.gz", subjects[3][0][0])
    fixed = save(tmp_path / "f.nii.gz", subjects[2][0][1])
    proc = subprocess.run([sys.executable, str(REPO / "register.py"), "--exp_num", "1", "--dim", "2", "--moving",
                           moving, "--fixed", fixed, "--out", str(tmp_path / "out"), "--gpu_num", "-1"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--dim 2 needs a 2D image" in proc.stderr


def test_refine_reports_the_network_alone_and_refined(exp_root, subjects, tmp_path, capsys):
    images, labels = subjects[2]
    moving = save(tmp_path / "m.nii.gz", images[0])
    fixed = save(tmp_path / "f.nii.gz", images[1])
    segs = [save(tmp_path / "ms.nii.gz", labels[0]), save(tmp_path / "fs.nii.gz", labels[1])]
    out = tmp_path / "out"
    assert register("--exp_num", 1, "--dim", 2, "--moving", moving, "--fixed", fixed, "--moving_seg", segs[0],
                    "--fixed_seg", segs[1], "--out", out, "--refine", 10) == 0
    printed = capsys.readouterr().out
    assert "network alone" in printed and "refined with 10 steps" in printed
    summary = json.loads((out / "registration.json").read_text())
    net = summary["network"]
    # The identity model: the network alone leaves Dice as it was; refinement moves the field.
    assert net["dice"] == pytest.approx(summary["initial_dice"]) and net["folding_percent"] == 0
    assert summary["refine_steps"] == 10 and summary["seconds_refine"] > 0
    field, _ = load(out / "displacement.nii.gz")
    assert np.abs(field).max() > 0


def test_refine_uses_the_loss_the_weights_were_trained_with(exp_root, subjects, tmp_path, capsys):
    """The weights' own config wins over config.json edited since, and is resolved: a key it leaves
    out (ncc_window here) takes the trainer's default, as in evaluate_<d>d.py --refine."""
    folder = xp.experiment_dir(2, 1)
    config = json.loads((folder / "config.json").read_text())
    trained = {**config, "train_config": {k: v for k, v in config["train_config"].items() if k != "ncc_window"}}
    trained["train_config"].update(similarity="ncc", reg_param=0.37, jac_param=0.2)
    weights = (folder / "weights.pth").read_bytes()
    edited = {**config, "train_config": {**config["train_config"], "reg_param": 5.0}}
    try:
        save_weights(folder, build_model("fnoreg", config["model_config"], 2), 0, [32, 40], config=trained)
        write_json(folder / "config.json", edited)
        images, _ = subjects[2]
        moving = save(tmp_path / "m.nii.gz", images[0])
        fixed = save(tmp_path / "f.nii.gz", images[1])
        assert register("--exp_num", 1, "--dim", 2, "--moving", moving, "--fixed", fixed, "--out", tmp_path / "out",
                        "--refine", 2) == 0
    finally:
        (folder / "weights.pth").write_bytes(weights)
        write_json(folder / "config.json", config)
    summary = json.loads((tmp_path / "out" / "registration.json").read_text())
    default = resolve_config({"model_name": "fnoreg", "model_config": MODEL[2]}, 2)["train_config"]["ncc_window"]
    assert summary["network"]["refine_loss"] == {"similarity": "ncc", "reg_param": 0.37, "jac_param": 0.2,
                                                 "ncc_window": default}


def test_fold_repair_flag_is_recorded(exp_root, subjects, tmp_path, capsys):
    images, _ = subjects[2]
    moving = save(tmp_path / "m.nii.gz", images[0])
    fixed = save(tmp_path / "f.nii.gz", images[1])
    assert register("--exp_num", 1, "--dim", 2, "--moving", moving, "--fixed", fixed, "--out", tmp_path / "on",
                    "--fold_repair", "on") == 0
    summary = json.loads((tmp_path / "on" / "registration.json").read_text())
    assert summary["fold_repair_override"] == "on" and summary["model_config"]["fold_repair"] is True
    assert register("--exp_num", 1, "--dim", 2, "--moving", moving, "--fixed", fixed, "--out", tmp_path / "plain") == 0
    plain = json.loads((tmp_path / "plain" / "registration.json").read_text())
    assert plain["fold_repair_override"] is None and not plain["model_config"].get("fold_repair", False)
