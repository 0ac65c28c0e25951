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


def registration_panel(fixed, moving, warped, flow_px, jacobian=None, columns=PANEL_COLUMNS, title=None):
    """Figure of one registered pair.

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
    n_rows, n_cols = len(slices), len(columns)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.6 * n_rows + 0.4), squeeze=False)
    diff_max = max(np.abs(moving - fixed).max(), 1e-6)
    mag = np.sqrt((flow_px**2).sum(0))
    mag_max = max(mag.max(), 1e-6)
    headings = {
        "fixed": "fixed", "moving": "moving", "warped": "warped moving", "diff_before": "|moving - fixed|",
        "diff_after": "|warped - fixed|", "grid": "deformed grid", "displacement": "|u| (pixels)",
        "jacobian": "Jacobian det. (folds red)",
    }
    for row, (slice_name, index) in enumerate(slices):
        # In-plane axes of this slice, to pick the in-plane displacement channels.
        plane_axes = [a for a in range(dim) if not isinstance(index[a], int)]
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if name in ("fixed", "moving", "warped"):
                _show(ax, {"fixed": fixed, "moving": moving, "warped": warped}[name][index], cmap="gray", vmin=0, vmax=1)
            elif name in ("diff_before", "diff_after"):
                other = moving if name == "diff_before" else warped
                _show(ax, np.abs(other - fixed)[index], cmap="magma", vmin=0, vmax=diff_max)
            elif name == "grid":
                draw_grid(ax, flow_px[plane_axes[0]][index], flow_px[plane_axes[1]][index])
            elif name == "displacement":
                _show(ax, mag[index], cmap="viridis", vmin=0, vmax=mag_max)
                im = ax.images[-1]
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            elif name == "jacobian":
                j = jac[index]
                _show(ax, j, cmap="RdBu_r", norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=2.0))
                fig.colorbar(ax.images[-1], ax=ax, fraction=0.046, pad=0.02)
                folds = np.ma.masked_where(j >= 0, np.ones_like(j))
                ax.imshow(folds, cmap=ListedColormap(["red"]), vmin=0, vmax=1, interpolation="nearest")
            if row == 0:
                ax.set_title(headings[name], fontsize=9)
            if col == 0 and slice_name:
                ax.set_ylabel(slice_name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
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
    if val_epochs:
        ax[0].plot(val_epochs, history["val_dice"], "o-", color="#1f77b4", ms=3, label="after registration")
    if initial_dice is not None:
        ax[0].axhline(initial_dice, color="gray", ls="--", label=f"before registration ({initial_dice:.3f})")
    ax[0].set(xlabel="epoch", ylabel="mean Dice", title="Validation Dice")
    ax[0].legend(loc="lower right", fontsize=8)
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

    terms = [k[len("train_"):] for k in history if k.startswith("train_") and k != "train_loss"]
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
        if f"val_{term}" in history and val_epochs:
            ax.plot(val_epochs, history[f"val_{term}"], "o-", ms=3, label="validation")
        ax.set(xlabel="epoch", title=f"{term} term (unweighted)")
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


__all__ = ["draw_grid", "mid_slices", "plot_history", "registration_panel", "save_figure", "PANEL_COLUMNS",
           "TRAIN_COLUMNS"]
