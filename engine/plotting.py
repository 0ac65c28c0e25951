"""Figures a person wants to look at: training curves and registration panels (2D and 3D).

Every function returns or writes a matplotlib figure using the non-interactive Agg backend, so
they work on a headless server. 3D data is shown as its three orthogonal mid-slices.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

AXIS_NAMES = {3: ("sagittal-like (axis 0)", "coronal-like (axis 1)", "axial-like (axis 2)")}
PANEL_COLUMNS = ("fixed", "moving", "warped", "diff_before", "diff_after", "grid", "displacement", "jacobian")
TRAIN_COLUMNS = ("fixed", "moving", "warped", "grid")


def _np(t):
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=np.float32)


def mid_slices(volume, dim):
    """[(title, index tuple)] of the slices to show: the whole image in 2D, three mid-slices in 3D."""
    if dim == 2:
        return [("", (slice(None), slice(None)))]
    out = []
    for axis in range(3):
        index = [slice(None)] * 3
        index[axis] = volume.shape[axis] // 2
        out.append((AXIS_NAMES[3][axis], tuple(index)))
    return out


def _show(ax, img, **kw):
    # Axis 0 runs down the page, axis 1 across: the array's own layout, no hidden flips.
    ax.imshow(img, origin="upper", interpolation="nearest", **kw)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_grid(ax, disp_rows, disp_cols, step=None, color="#1f4e79"):
    """Draw the deformed pixel grid ``x + u(x)`` of a 2D slice (displacements in pixels)."""
    n_r, n_c = disp_rows.shape
    step = step or max(2, int(round(min(n_r, n_c) / 24)))
    rows, cols = np.meshgrid(np.arange(n_r), np.arange(n_c), indexing="ij")
    yy, xx = rows + disp_rows, cols + disp_cols
    for r in range(0, n_r, step):
        ax.plot(xx[r, :], yy[r, :], color=color, lw=0.6)
    for c in range(0, n_c, step):
        ax.plot(xx[:, c], yy[:, c], color=color, lw=0.6)
    ax.set_xlim(-0.5, n_c - 0.5)
    ax.set_ylim(n_r - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _image_range(*images):
    """Display range shared by the intensity images: 0 to a robust maximum.

    neurite-OASIS white matter sits near 0.4 on a [0, 1] scale, so a fixed 0..1 range shows
    dark, flat brains; the 99.9th percentile of the non-zero voxels gives the usual contrast.
    """
    values = np.concatenate([im[im > 0].ravel() for im in images])
    top = float(np.percentile(values, 99.9)) if values.size else 1.0
    return 0.0, top if top > 0 else 1.0


def _panel_layout(n_slices, n_columns, dim):
    """(rows, columns per row, wrap) of the panel grid: 2D panels wider than 5 wrap onto two rows."""
    wrap = 2 if dim == 2 and n_columns > 5 else 1
    per_row = -(-n_columns // wrap)
    return n_slices * wrap, per_row, wrap


def registration_panel(fixed, moving, warped, flow_px, jacobian=None, columns=PANEL_COLUMNS, title=None):
    """Figure of one registered pair.

    2D pairs are one image per column (wrapped onto two rows when there are more than five
    columns); 3D pairs show one row per orthogonal mid-slice. Images are shown in array layout
    (axis 0 down the page), intensities on a shared robust range, differences on a shared range
    so that before and after compare directly, and folded pixels (J < 0) in bright green on the
    Jacobian map with their percentage in the corner.

    Parameters
    ----------
    fixed, moving, warped : array-like
        (*spatial) images (2D or 3D).
    flow_px : array-like
        (d, *spatial) displacement in pixels (``models.to_pixel_units``), channel i along axis i.
    jacobian : array-like, optional
        (*spatial) Jacobian determinant; needed for the "jacobian" column.
    columns : sequence of str
        Any of ``PANEL_COLUMNS``.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fixed, moving, warped, flow_px = (_np(x) for x in (fixed, moving, warped, flow_px))
    jac = None if jacobian is None else _np(jacobian)
    columns = [c for c in columns if c != "jacobian" or jac is not None]
    dim = fixed.ndim
    slices = mid_slices(fixed, dim)
    n_rows, per_row, wrap = _panel_layout(len(slices), len(columns), dim)
    # Row height follows the slices' height/width ratio, so rows do not float in white space.
    ratio = np.mean([np.squeeze(fixed[index]).shape[0] / np.squeeze(fixed[index]).shape[1] for _, index in slices])
    row_height = 2.5 * max(0.5, min(1.5, float(ratio))) + 0.35
    fig, axes = plt.subplots(n_rows, per_row, figsize=(2.5 * per_row, row_height * n_rows + 0.4), squeeze=False)
    vmin, vmax = _image_range(fixed, moving)
    diff_max = max(np.abs(moving - fixed).max(), np.abs(warped - fixed).max(), 1e-6)
    mag = np.sqrt((flow_px**2).sum(0))
    # A robust top: a few border pixels with large displacements must not flatten the rest.
    mag_max = max(float(np.percentile(mag, 99.5)), 1e-6)
    headings = {
        "fixed": "fixed", "moving": "moving", "warped": "warped moving", "diff_before": "|moving - fixed|",
        "diff_after": "|warped - fixed|", "grid": "deformed grid", "displacement": "|u| (pixels)",
        "jacobian": "Jacobian det. (J<0 green)",
    }
    for s, (slice_name, index) in enumerate(slices):
        # In-plane axes of this slice, to pick the in-plane displacement channels.
        plane_axes = [a for a in range(dim) if not isinstance(index[a], int)]
        for k, name in enumerate(columns):
            row, col = s * wrap + k // per_row, k % per_row
            ax = axes[row, col]
            if name in ("fixed", "moving", "warped"):
                image = {"fixed": fixed, "moving": moving, "warped": warped}[name][index]
                _show(ax, image, cmap="gray", vmin=vmin, vmax=vmax)
            elif name in ("diff_before", "diff_after"):
                other = moving if name == "diff_before" else warped
                _show(ax, np.abs(other - fixed)[index], cmap="magma", vmin=0, vmax=diff_max)
            elif name == "grid":
                draw_grid(ax, flow_px[plane_axes[0]][index], flow_px[plane_axes[1]][index])
            elif name == "displacement":
                _show(ax, mag[index], cmap="viridis", vmin=0, vmax=mag_max)
                fig.colorbar(ax.images[-1], ax=ax, fraction=0.046, pad=0.02,
                             extend="max" if mag.max() > mag_max * 1.001 else "neither")
            elif name == "jacobian":
                j = jac[index]
                _show(ax, j, cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0))
                fig.colorbar(ax.images[-1], ax=ax, fraction=0.046, pad=0.02)
                # Red already means expansion on this map, so folds get a colour of their own.
                folds = np.ma.masked_where(j >= 0, np.ones_like(j))
                ax.imshow(folds, cmap=ListedColormap(["#39ff14"]), vmin=0, vmax=1, interpolation="nearest")
                where = " in slice" if dim == 3 else ""
                ax.text(0.02, 0.02, f"{100.0 * (j < 0).mean():.2f}% J<0{where}", transform=ax.transAxes, fontsize=7,
                        color="black", va="bottom", bbox=dict(facecolor="white", alpha=0.7, lw=0, pad=1))
            if s == 0:
                ax.set_title(headings[name], fontsize=9)
            if col == 0 and slice_name:
                ax.set_ylabel(slice_name, fontsize=8)
        for k in range(len(columns), wrap * per_row):  # empty cells of a wrapped last row
            axes[s * wrap + k // per_row, k % per_row].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def dice_boxplot(before, after, label_ids, label_names=None, title=None):
    """Box plot of per-label Dice before and after registration, one pair of boxes per label.

    Parameters
    ----------
    before, after : array-like
        (n_pairs, n_labels) Dice; NaN (label absent from both maps, or a pair without labels)
        is left out. Labels with no finite value at all are not drawn.
    label_ids : sequence of int
        Label id of each column.
    label_names : dict of int to str, optional
        Names shown on the x axis (the id where a name is missing).
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        The leftmost group ("mean") is the pair score, the mean over the labels of each pair.
    """
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    names = label_names or {}
    groups = []
    with np.errstate(all="ignore"):
        # The pair score skips absent labels, as engine.metrics.mean_dice does.
        valid = np.isfinite(before).any(1)
        pair_b = np.array([np.nanmean(r) for r in before[valid]])
        pair_a = np.array([np.nanmean(r) for r in after[valid]])
    if pair_b.size:
        groups.append(("mean", pair_b, pair_a))
    for k, label in enumerate(label_ids):
        b, a = before[:, k], after[:, k]
        b, a = b[np.isfinite(b)], a[np.isfinite(a)]
        if b.size or a.size:
            groups.append((f"{names[label]} ({label})" if label in names else str(label), b, a))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.42 * len(groups) + 1.8), 4.2))
    style = dict(widths=0.34, patch_artist=True, showfliers=True, flierprops=dict(markersize=2))
    for offset, idx, colour, legend in ((-0.19, 1, "#b0b0b0", "before registration"),
                                        (0.19, 2, "#1f77b4", "after registration")):
        data = [g[idx] if len(g[idx]) else [np.nan] for g in groups]
        box = ax.boxplot(data, positions=np.arange(len(groups)) + offset, **style)
        for patch in box["boxes"]:
            patch.set(facecolor=colour, edgecolor="black", linewidth=0.6)
        for median in box["medians"]:
            median.set(color="black", linewidth=1.0)
        ax.plot([], [], "s", color=colour, markeredgecolor="black", label=legend)
    ax.set_xticks(np.arange(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], rotation=60, ha="right", fontsize=7)
    if groups:
        ax.axvline(0.5, color="gray", lw=0.6, ls=":")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    # Above the axes, so that it never hides a box; the title moves to the left to make room.
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=8, frameon=False)
    if title:
        ax.set_title(title, fontsize=10, loc="left")
    fig.tight_layout()
    return fig


def plot_history(history, out_dir, initial_dice=None):
    """Write ``dice.png`` (validation Dice) and ``loss.png`` (train/val loss and terms) to ``out_dir``.

    Parameters
    ----------
    history : dict
        Lists keyed by metric name; ``epoch`` for training entries, ``val_epoch`` for validation.
    out_dir : path
        Folder for the PNG files (created if needed).
    initial_dice : float, optional
        Dice before registration, drawn as a reference line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val_epochs = history.get("val_epoch", [])

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    if val_epochs and len(history.get("val_dice", [])) == len(val_epochs):  # no Dice without labelled val pairs
        ax[0].plot(val_epochs, history["val_dice"], "o-", color="#1f77b4", ms=3, label="after registration")
    if initial_dice is not None:
        ax[0].axhline(initial_dice, color="gray", ls="--", label=f"before registration ({initial_dice:.3f})")
    ax[0].set(xlabel="epoch", ylabel="mean Dice", title="Validation Dice")
    if ax[0].get_legend_handles_labels()[0]:
        ax[0].legend(loc="lower right", fontsize=8)
    else:  # say why the panel is empty rather than draw an empty legend
        ax[0].text(0.5, 0.5, "no labelled validation pairs:\nno Dice", ha="center", va="center",
                   transform=ax[0].transAxes, color="gray")
    ax[0].grid(alpha=0.3)
    if val_epochs:
        ax[1].plot(val_epochs, history["val_folding"], "o-", color="#d62728", ms=3)
    ax[1].set(xlabel="epoch", ylabel="% folded pixels", title="Validation folding (J < 0)")
    ax[1].grid(alpha=0.3)
    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out_dir / "dice.png", dpi=110)
    plt.close(fig)

    # Terms logged every epoch (a key renamed between versions would not line up with the epochs).
    terms = [k[len("train_"):] for k in history if k.startswith("train_") and k != "train_loss"
             and len(history[k]) == len(history.get("epoch", []))]
    n = 1 + len(terms)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(history.get("epoch", []), history.get("train_loss", []), "-", label="train")
    if val_epochs:
        ax.plot(val_epochs, history["val_loss"], "o-", ms=3, label="validation")
    ax.set(xlabel="epoch", title="Total loss")
    ax.legend(fontsize=8)
    for ax, term in zip(axes[0, 1:], terms):
        ax.plot(history["epoch"], history[f"train_{term}"], "-", label="train")
        if len(history.get(f"val_{term}", [])) == len(val_epochs) > 0:
            ax.plot(val_epochs, history[f"val_{term}"], "o-", ms=3, label="validation")
        ax.set(xlabel="epoch", title=f"{term.replace('_', ' ')} term (unweighted)")
        ax.legend(fontsize=8)
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        values = np.concatenate([line.get_ydata() for line in ax.get_lines()]) if ax.get_lines() else []
        if len(values) and np.all(np.asarray(values) > 0):
            ax.set_yscale("log")  # losses fall over orders of magnitude
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=110)
    plt.close(fig)


def save_figure(fig, path, dpi=120):
    """Save and close ``fig``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


__all__ = ["dice_boxplot", "draw_grid", "mid_slices", "plot_history", "registration_panel", "save_figure",
           "PANEL_COLUMNS", "TRAIN_COLUMNS"]
