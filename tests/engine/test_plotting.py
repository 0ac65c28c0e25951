"""Figures: registration panels (2D wrap, 3D mid-slices, folds marked) and the per-label Dice box plot."""

import numpy as np
import pytest

from engine.plotting import PANEL_COLUMNS, TRAIN_COLUMNS, dice_boxplot, registration_panel, save_figure


def pair(shape):
    rng = np.random.default_rng(0)
    fixed, moving = rng.random(shape).astype(np.float32) * 0.4, rng.random(shape).astype(np.float32) * 0.4
    flow = rng.normal(size=(len(shape), *shape)).astype(np.float32)
    jac = np.ones(shape, dtype=np.float32)
    jac.flat[:5] = -0.5  # a few folded pixels
    return fixed, moving, moving, flow, jac


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]


@pytest.mark.parametrize("shape, columns, n_axes", [
    ((16, 20), TRAIN_COLUMNS, 4),              # the trainer's panel: one row
    ((16, 20), PANEL_COLUMNS, 8),              # 2D evaluation panel: wrapped onto two rows of four
    ((10, 12, 14), PANEL_COLUMNS, 24),         # 3D: one row per orthogonal mid-slice
])
def test_registration_panel_layout(shape, columns, n_axes, tmp_path):
    fixed, moving, warped, flow, jac = pair(shape)
    fig = registration_panel(fixed, moving, warped, flow, jac if "jacobian" in columns else None, columns=columns,
                             title="pair")
    axes = visible_axes(fig)
    assert len(axes) == n_axes
    if "jacobian" in columns:
        jac_axes = [ax for ax in axes if ax.get_title().startswith("Jacobian")]
        assert jac_axes and "J<0" in jac_axes[0].texts[0].get_text()
        # The fold overlay is the second image on the Jacobian axis and masks every unfolded pixel.
        assert len(jac_axes[0].images) == 2 and jac_axes[0].images[1].get_array().mask.sum() < jac.size
    save_figure(fig, tmp_path / "panel.png")
    assert (tmp_path / "panel.png").stat().st_size > 0


def test_registration_panel_without_jacobian_drops_that_column():
    fixed, moving, warped, flow, _ = pair((16, 20))
    fig = registration_panel(fixed, moving, warped, flow, None)
    titles = [ax.get_title() for ax in visible_axes(fig)]
    assert len(titles) == 7 and not any(t.startswith("Jacobian") for t in titles)


def test_dice_boxplot_skips_absent_labels(tmp_path):
    before = np.array([[0.5, np.nan, 0.2], [0.6, np.nan, 0.3]])
    after = np.array([[0.7, np.nan, 0.4], [0.8, np.nan, 0.5]])
    fig = dice_boxplot(before, after, [1, 2, 3], {1: "L-cortex", 3: "R-cortex"}, title="test")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["mean", "L-cortex (1)", "R-cortex (3)"]
    save_figure(fig, tmp_path / "box.png")
    assert (tmp_path / "box.png").stat().st_size > 0


def test_history_plots_skip_a_term_that_does_not_span_every_epoch(tmp_path):
    from engine.plotting import plot_history

    # A run resumed across a rename of a loss term: the old key covers the first epochs only.
    history = {"epoch": [1, 2, 3], "train_loss": [0.3, 0.2, 0.1], "train_similarity": [0.3, 0.2, 0.1],
               "train_folding": [0.01, 0.01], "val_epoch": [1, 2, 3], "val_loss": [0.3, 0.2, 0.1],
               "val_folding": [0.0, 0.0, 0.0], "val_dice": [0.5, 0.6, 0.7]}
    plot_history(history, tmp_path)
    assert (tmp_path / "loss.png").stat().st_size > 0 and (tmp_path / "dice.png").stat().st_size > 0
