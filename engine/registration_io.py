"""Register a user's own NIfTI pair with a trained experiment: the code behind ``register.py``.

``python register.py --exp_num N --dim 2|3 --moving M.nii.gz --fixed F.nii.gz --out DIR``
``[--moving_seg S] [--fixed_seg T] [--ckpt_epoch E] [--gpu_num K] [--rescale] [--refine K [--refine_lr L]]``
``[--fold_repair on|off]``

Inputs
------
- A 2D image may be stored as (H, W) or (H, W, 1) (trailing singleton axes are dropped); a 3D
  image is (D, H, W). An image whose dimension does not match ``--dim`` is an error.
- The pair must already be affinely aligned voxel to voxel, as neurite-OASIS is: the network
  sees the two arrays, not their affines. When the moving image has another shape than the fixed
  one it is resampled onto the fixed image's grid with corners aligned (linear for the image,
  nearest neighbour for its label map), i.e. both are taken to cover the same field of view.
- Intensities are used as given: the network was trained on images in [0, 1] (neurite-OASIS
  scaling). Images outside that range get a notice; ``--rescale`` min-max rescales each image to
  [0, 1] for the network only (outputs keep the moving image's own intensities).
- The network runs at the fixed image's resolution: FNOReg's weights apply at any resolution.

Outputs (in ``--out``, all with the fixed image's affine and, but for the displacement, its array
shape)
-------
``warped.nii.gz``
    The moving image warped onto the fixed one, float32, in the moving image's intensities.
``displacement.nii.gz``
    The displacement u in voxels of the fixed grid, pull convention: voxel x of the warped image
    is sampled from the moving image at x + u(x). NIfTI vector layout (intent "vector"): shape
    (X, Y, Z, 1, d), the components in the 5th axis, component i along array (voxel) axis i; a 2D
    field is (H, W, 1, 1, 2). Components are voxel offsets, not millimetres or world (RAS)
    vectors: ``affine[:3, :3] @ u`` converts to world coordinates.
``jacobian.nii.gz``
    Jacobian determinant of x + u(x) (central differences, voxel units); J < 0 marks folds.
``warped_seg.nii.gz``
    With ``--moving_seg``: the moving label map warped by nearest neighbour, integers.
``registration.json``
    Inputs, experiment, checkpoint, shapes, folding %, SDlogJ, and Dice before/after over the
    labels present in either map when both ``--moving_seg`` and ``--fixed_seg`` are given.
``registration.png``
    Panel of fixed, moving, warped, differences, deformed grid, |u| and Jacobian map.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from data.nifti import drop_trailing_singletons, integral_labels
from data.resize import resize_images, resize_labels
from engine import experiment as xp
from engine.checkpoint import add_fold_repair_argument, load_model, set_fold_repair
from engine.config import resolve_config, trained_config
from engine.metrics import folding_percent, jacobian_determinant, mean_dice, sdlogj
from engine.plotting import registration_panel, save_figure
from engine.refine import DEFAULT_REFINE_LR, refine_field, refine_loss
from engine.scoring import timed, timed_registration
from losses import RegistrationLoss
from models import to_pixel_units, warp
from models.spectral import weight_cache
from utils.device import select_device
from utils.errors import DataError, ShapeError, UserError
from utils.fileio import read_json, write_json

OUTPUTS = {"warped": "warped.nii.gz", "displacement": "displacement.nii.gz", "jacobian": "jacobian.nii.gz",
           "warped_seg": "warped_seg.nii.gz", "summary": "registration.json", "panel": "registration.png"}
_RANGE_TOLERANCE = 1e-3
_LAYOUT = {2: "a 2D image (H, W) or (H, W, 1)", 3: "a 3D volume (D, H, W)"}


@dataclass
class NiftiInput:
    """One input file: its array with ``dim`` axes, the loaded image (affine, header) and the file's shape."""

    path: Path
    array: np.ndarray
    image: nib.spatialimages.SpatialImage
    file_shape: tuple


def read_nifti(path, dim, what):
    """Read a NIfTI file as an array with ``dim`` axes (trailing singleton axes dropped).

    Parameters
    ----------
    path : path-like
        The file.
    dim : int
        2 or 3 (``--dim``).
    what : str
        How to name the file in messages, e.g. "--moving".

    Raises
    ------
    UserError
        The file is missing, unreadable, or not ``dim``-dimensional.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; give the path of a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(path)
        array = np.asanyarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 - nibabel raises many kinds of errors for foreign files
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{what} {path} cannot be read as NIfTI ({reason}); give a .nii or .nii.gz file") from None
    file_shape = tuple(array.shape)
    # Trailing singleton axes carry no data: (H, W, 1) is a 2D slice, (D, H, W, 1) a 3D volume.
    array = drop_trailing_singletons(array, 2)
    if array.ndim != dim:
        found = f"{array.ndim}D" if array.ndim in (2, 3) else f"{array.ndim}-axis"
        hint = f"use --dim {array.ndim}" if array.ndim in (2, 3) else "give a single 2D or 3D image"
        raise ShapeError(f"{what} {path} has shape {file_shape}, a {found} image, but --dim {dim} needs "
                         f"{_LAYOUT[dim]}; {hint}")
    if min(array.shape) < 2:
        raise ShapeError(f"{what} {path} has shape {file_shape}; every axis needs at least 2 voxels")
    return NiftiInput(path, array, image, file_shape)


def _as_image(nifti, what):
    data = nifti.array.astype(np.float32)
    if not np.isfinite(data).all():
        raise DataError(f"{what} {nifti.path} has {int((~np.isfinite(data)).sum())} NaN or infinite voxels; "
                        f"replace them (e.g. by 0) first")
    return data


def _as_labels(nifti, what):
    data = integral_labels(nifti.array, f"{what} {nifti.path}")
    if data.size and data.min() < 0:
        raise DataError(f"{what} {nifti.path} has negative labels (min {data.min()}); labels must be >= 0")
    return data.astype(np.int64)


def _out_dtype(nifti):
    """Integer dtype for the warped label map: the input's own, or int32 for float-stored labels."""
    kind = nifti.array.dtype.kind
    return nifti.array.dtype if kind in "iu" else np.dtype(np.int32)


def rescale01(x):
    """Min-max rescale a tensor to [0, 1] (a constant image becomes zeros)."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low) if high > low else torch.zeros_like(x)


def nifti_like(data, reference, intent=None):
    """A NIfTI-1 image of ``data`` with ``reference``'s affine, qform/sform codes and units.

    A fresh header (not a copy of the reference's) so that no scaling slope or data type of the
    reference is applied to data of another kind.
    """
    out = nib.Nifti1Image(data, reference.affine)
    header = getattr(reference, "header", None)
    if isinstance(header, nib.Nifti1Header):
        out.set_sform(reference.get_sform(), int(header["sform_code"]))
        out.set_qform(reference.get_qform(), int(header["qform_code"]))
        out.header.set_xyzt_units(*header.get_xyzt_units())
    if intent is not None:
        out.header.set_intent(intent, name="displacement")
    return out


def _short(path):
    """``folder/name`` of a path: subjects often differ only in their folder (OASIS: .../slice_norm.nii.gz)."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def _notice(message):
    print(f"notice: {message}", file=sys.stderr)


def _check_range(x, what, path):
    low, high = float(x.min()), float(x.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        _notice(f"{what} {path} has intensities in [{low:.4g}, {high:.4g}] but the model was trained on [0, 1]; "
                f"pass --rescale to min-max rescale the inputs")


def _check_aspect(shape, train_size, path):
    """Warn when the pair's side ratios differ from the training shape's (a transposed or cropped layout)."""
    if not train_size or len(train_size) != len(shape):
        return
    ratios = np.asarray(shape, dtype=float) / np.asarray(train_size, dtype=float)
    if ratios.max() / ratios.min() > 1.15:
        _notice(f"the fixed image {path} is {'x'.join(map(str, shape))} but the model was trained on "
                f"{'x'.join(map(str, train_size))} images; check the axis order matches the training data")


def register_files(exp_num, dim, moving, fixed, out, moving_seg=None, fixed_seg=None, ckpt_epoch=None, gpu_num=0,
                   rescale=False, refine=0, refine_lr=DEFAULT_REFINE_LR, fold_repair=None):
    """Register ``moving`` onto ``fixed`` with experiment ``exp_num`` and write the outputs to ``out``.

    Parameters
    ----------
    exp_num : int
        Experiment number in ``experiments/<dim>d``.
    dim : int
        2 or 3.
    moving, fixed : path-like
        NIfTI images.
    out : path-like
        Output folder (created; files of the same names are replaced).
    moving_seg, fixed_seg : path-like, optional
        Label maps of the moving image (warped and written) and of the fixed image (Dice only).
    ckpt_epoch : int, optional
        Use this checkpoint instead of the final weights.
    gpu_num : int
        ``cuda:<gpu_num>``; -1 for the CPU.
    rescale : bool
        Min-max rescale both images to [0, 1] for the network.
    refine : int
        Per-pair refinement steps (:mod:`engine.refine`, 0: off) on the experiment's own loss
        weights plus a folding penalty; the summary then also holds the network's own scores
        under ``network``.
    refine_lr : float
        Refinement Adam step, in pixels.
    fold_repair : {"on", "off"}, optional
        Override the trained FNOReg's ``fold_repair`` (:func:`engine.checkpoint.set_fold_repair`);
        ``registration.json`` records the setting that ran.

    Returns
    -------
    dict
        What ``registration.json`` holds, plus ``outputs``: {kind: path}.
    """
    mov = read_nifti(moving, dim, "--moving")
    fix = read_nifti(fixed, dim, "--fixed")
    mov_seg = read_nifti(moving_seg, dim, "--moving_seg") if moving_seg else None
    fix_seg = read_nifti(fixed_seg, dim, "--fixed_seg") if fixed_seg else None
    for seg, image, name in ((mov_seg, mov, "--moving"), (fix_seg, fix, "--fixed")):
        if seg is not None and seg.array.shape != image.array.shape:
            raise ShapeError(f"{name}_seg {seg.path} has shape {seg.file_shape} but {name} {image.path} has "
                             f"{image.file_shape}; a label map must match its image voxel for voxel")
    if refine < 0 or not refine_lr > 0:
        raise UserError(f"--refine must be >= 0 and --refine_lr positive, got {refine} and {refine_lr}")
    folder = xp.experiment_dir(dim, exp_num)
    device = select_device(gpu_num)
    model, info = load_model(folder, ckpt_epoch, device)
    info = set_fold_repair(model, info, fold_repair)

    shape = fix.array.shape
    _check_aspect(shape, info["train_size"], fix.path)
    moving_t = torch.from_numpy(_as_image(mov, "--moving"))[None, None].to(device)
    fixed_t = torch.from_numpy(_as_image(fix, "--fixed"))[None, None].to(device)
    if mov.array.shape != shape:
        _notice(f"moving image {'x'.join(map(str, mov.array.shape))} resampled to the fixed image's "
                f"{'x'.join(map(str, shape))} (same field of view assumed)")
        moving_t = resize_images(moving_t, shape)
    elif not np.allclose(mov.image.affine, fix.image.affine, atol=1e-3):
        _notice("moving and fixed affines differ; the arrays are registered voxel to voxel, so they must already be "
                "aligned in voxel space (as neurite-OASIS images are)")
    if rescale:
        net_moving, net_fixed = rescale01(moving_t), rescale01(fixed_t)
    else:
        _check_range(moving_t, "--moving", mov.path)
        _check_range(fixed_t, "--fixed", fix.path)
        net_moving, net_fixed = moving_t, fixed_t

    # The weight cache is freed when the block ends (models.spectral.weight_cache).
    with torch.inference_mode(), weight_cache(model):
        flow, _, seconds = timed_registration(model, net_moving, net_fixed, device)
        network = None
        if refine:
            network = {"folding_percent": float(folding_percent(flow)[0]), "sdlogj": float(sdlogj(flow)[0]),
                       "seconds_forward_warp": seconds}
            network_flow = flow
            loss = _refine_loss(folder, info, dim)
            network["refine_loss"] = {k: getattr(loss, k)
                                      for k in ("similarity", "reg_param", "jac_param", "ncc_window")}
            flow, seconds_refine = timed(lambda: refine_field(net_moving, net_fixed, network_flow, refine, loss,
                                                              refine_lr, repair=getattr(model, "fold_repair", False)),
                                         device)
        warped = warp(moving_t, flow)  # the moving image's own intensities, even with --rescale
        jac = jacobian_determinant(flow)
        flow_px = to_pixel_units(flow)
        warped_seg = dice = None
        if mov_seg is not None:
            labels = torch.from_numpy(_as_labels(mov_seg, "--moving_seg"))[None, None].to(device)
            labels = resize_labels(labels, shape)
            warped_seg = warp(labels, flow)
            if fix_seg is not None:
                fixed_labels = torch.from_numpy(_as_labels(fix_seg, "--fixed_seg"))[None, None].to(device)
                ids = sorted((set(torch.unique(labels).tolist()) | set(torch.unique(fixed_labels).tolist())) - {0})
                if ids:
                    dice = {"initial_dice": float(mean_dice(labels, fixed_labels, ids)[0]),
                            "dice": float(mean_dice(warped_seg, fixed_labels, ids)[0]), "n_labels": len(ids)}
                    if network is not None:
                        network["dice"] = float(mean_dice(warp(labels, network_flow), fixed_labels, ids)[0])
        folding = float(folding_percent(jacobian=jac)[0])
        sd = float(sdlogj(jacobian=jac)[0])

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS.values():  # an earlier registration's files must not sit beside this one's
        (out / name).unlink(missing_ok=True)
    paths = {}

    def save(kind, array, intent=None):
        paths[kind] = str(out / OUTPUTS[kind])
        nib.save(nifti_like(array, fix.image, intent), paths[kind])

    save("warped", warped[0, 0].cpu().numpy().astype(np.float32).reshape(fix.file_shape))
    save("jacobian", jac[0].cpu().numpy().astype(np.float32).reshape(fix.file_shape))
    # NIfTI vector layout: three spatial axes (2D padded with one), a singleton time axis, components last.
    field = flow_px[0].movedim(0, -1).cpu().numpy().astype(np.float32)
    field = field.reshape(*shape, *([1] * (3 - dim)), 1, dim)
    save("displacement", field, intent="vector")
    if warped_seg is not None:
        save("warped_seg", warped_seg[0, 0].cpu().numpy().astype(_out_dtype(mov_seg)).reshape(fix.file_shape))
    fig = registration_panel(fixed_t[0, 0], moving_t[0, 0], warped[0, 0], flow_px[0], jac[0],
                             title=f"{_short(mov.path)} -> {_short(fix.path)} | J<0 {folding:.2f}% | SDlogJ {sd:.3f}")
    paths["panel"] = str(out / OUTPUTS["panel"])
    save_figure(fig, paths["panel"])
    summary = {"moving": str(mov.path), "fixed": str(fix.path), "moving_seg": moving_seg and str(mov_seg.path),
               "fixed_seg": fixed_seg and str(fix_seg.path), "exp_num": exp_num, "dim": dim,
               "model_config": info["model_config"], "fold_repair_override": info.get("fold_repair_override"),
               "checkpoint": info["checkpoint"], "checkpoint_path": info["path"], "train_size": info["train_size"],
               "moving_shape": list(mov.array.shape), "fixed_shape": list(shape), "rescaled": bool(rescale),
               "device": str(device), "folding_percent": folding, "sdlogj": sd, "max_displacement_voxels":
               float(flow_px.norm(dim=1).max()), "seconds_forward_warp": seconds,
               "displacement_convention": "voxels of the fixed grid, pull (warped(x) = moving(x + u(x))), "
                                          "NIfTI vector layout (X, Y, Z, 1, d), component i along array axis i"}
    if dice is not None:
        summary.update(dice)
    if network is not None:
        summary.update(refine_steps=refine, refine_lr=refine_lr, seconds_refine=seconds_refine, network=network)
    paths["summary"] = str(out / OUTPUTS["summary"])
    write_json(paths["summary"], {**summary, "outputs": paths})
    return {**summary, "outputs": paths}


def _refine_loss(folder, info, dim):
    """The refinement objective from the training loss the loaded weights were trained with
    (their own config; ``config.json`` for weights written before they carried one), resolved
    as training resolved it, so that a key the stored config leaves out takes the trainer's
    default, as :func:`engine.evaluation` does for ``--refine``."""
    trained = trained_config(info.get("config"), dim, source=info["path"])
    if trained is None:
        path = Path(folder) / "config.json"
        trained = resolve_config(read_json(path), dim, source=str(path))
    return refine_loss(RegistrationLoss.from_config(trained["train_config"]))


def register_parser():
    """Flags of ``register.py``."""
    parser = argparse.ArgumentParser(
        prog="register.py",
        description="Register your own NIfTI pair with a trained experiment; writes the warped image, the "
                    "displacement (voxels) and the Jacobian determinant with the fixed image's affine.",
    )
    parser.add_argument("--exp_num", type=int, required=True, help="experiment whose model registers the pair")
    parser.add_argument("--dim", type=int, choices=(2, 3), required=True, help="2 or 3: which experiments/<d>d")
    parser.add_argument("--moving", required=True, help="moving image (.nii / .nii.gz)")
    parser.add_argument("--fixed", required=True, help="fixed image (.nii / .nii.gz); outputs take its grid")
    parser.add_argument("--out", required=True, help="output folder (created if needed)")
    parser.add_argument("--moving_seg", help="label map of the moving image, warped with nearest neighbour")
    parser.add_argument("--fixed_seg", help="label map of the fixed image: report Dice before/after")
    parser.add_argument("--ckpt_epoch", type=int, help="use the checkpoint of this epoch instead of weights.pth")
    parser.add_argument("--gpu_num", type=int, default=0, help="GPU index (cuda:K); -1 runs on the CPU (default 0)")
    parser.add_argument("--refine", type=int, default=0, metavar="K", help="refine the field with K Adam steps on "
                        "this pair's similarity, smoothness and folding penalty (default 0: off)")
    parser.add_argument("--refine_lr", type=float, default=DEFAULT_REFINE_LR,
                        help=f"refinement step in pixels (default {DEFAULT_REFINE_LR})")
    parser.add_argument("--rescale", action="store_true", help="min-max rescale both images to [0, 1] for the "
                        "network (default: intensities as given, expected in [0, 1])")
    add_fold_repair_argument(parser)
    return parser


def register_main(argv=None):
    """Entry point of ``register.py``: register, write the outputs, print one line per output."""
    args = register_parser().parse_args(argv)
    if args.fixed_seg and not args.moving_seg:
        raise UserError("--fixed_seg needs --moving_seg (Dice compares the warped moving labels with it)")
    result = register_files(args.exp_num, args.dim, args.moving, args.fixed, args.out, args.moving_seg,
                            args.fixed_seg, args.ckpt_epoch, args.gpu_num, args.rescale, args.refine, args.refine_lr,
                            args.fold_repair)
    net = result.get("network")
    if net is not None:
        line = f"network alone: folding {net['folding_percent']:.3f}%"
        if "dice" in net:
            line += f", Dice {net['dice']:.4f}"
        print(line + f" ({1000 * net['seconds_forward_warp']:.1f} ms); refined with {args.refine} steps "
              f"({1000 * result['seconds_refine']:.0f} ms):")
    line = (f"registered with experiment {args.exp_num} ({result['checkpoint']}): "
            f"folding {result['folding_percent']:.3f}%, SDlogJ {result['sdlogj']:.4f}")
    if "dice" in result:
        line += f", Dice {result['initial_dice']:.4f} -> {result['dice']:.4f}"
    print(line)
    for kind, path in result["outputs"].items():
        print(f"  {kind:13s} {path}")
    return 0


__all__ = ["NiftiInput", "nifti_like", "read_nifti", "register_files", "register_main", "register_parser",
           "rescale01"]
