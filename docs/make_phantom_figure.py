"""Draw docs/images/phantom_2d.png: a few 2D phantom subjects and their seg24 label maps.

    python docs/make_phantom_figure.py [--out docs/images/phantom_2d.png] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.labels import SCHEMES  # noqa: E402
from data.phantom import generate_phantom  # noqa: E402


# FreeSurfer's colour table (FreeSurferColorLUT.txt), the colours freeview shows for these labels.
_FREESURFER_RGB = {
    "cerebral-WM": (245, 245, 245), "cortex": (205, 62, 78), "lateral-ventricle": (120, 18, 134),
    "inf-lat-ventricle": (196, 58, 250), "thalamus": (0, 118, 14), "caudate": (122, 186, 220),
    "putamen": (236, 13, 176), "pallidum": (12, 48, 255), "3rd-ventricle": (204, 182, 142),
    "brain-stem": (119, 159, 176), "hippocampus": (220, 216, 20), "ventral-DC": (165, 42, 42),
    "choroid-plexus": (0, 200, 200),
}


def _structure_colours() -> tuple[ListedColormap, dict[str, tuple]]:
    """seg24 colour map; the right side is a lighter tint of the left so the labels differ."""
    colours = np.zeros((25, 4))
    legend = {}
    for label, name in SCHEMES["seg24"].items():
        base = name.removeprefix("L-").removeprefix("R-")
        rgb = np.array(_FREESURFER_RGB[base]) / 255
        if name.startswith("R-"):
            rgb = 0.7 * rgb + 0.3
        colours[label] = (*rgb, 1.0)
        legend.setdefault(base, colours[label])
    return ListedColormap(colours), legend


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "images" / "phantom_2d.png"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args(argv)

    images, labels = generate_phantom(args.n, 2, seed=args.seed)
    cmap, legend = _structure_colours()
    fig, axes = plt.subplots(2, args.n, figsize=(2.6 * args.n + 2.6, 6.6), facecolor="black")
    for i in range(args.n):
        img = images[i, 0].numpy().T  # rows: superior -> inferior; columns: right -> left
        lab = labels[i, 0].numpy().T
        axes[0, i].imshow(img, cmap="gray", vmin=0, vmax=0.55, interpolation="nearest")
        axes[0, i].set_title(f"subject {i}", color="white", fontsize=11)
        axes[1, i].imshow(lab, cmap=cmap, vmin=0, vmax=24, interpolation="nearest")
    for ax in axes.flat:
        ax.set_axis_off()
        ax.set_xlim(8, 152)
        ax.set_ylim(160, 12)
    axes[0, 0].text(-0.04, 0.5, "T1-like image", transform=axes[0, 0].transAxes, color="white",
                    rotation=90, ha="right", va="center", fontsize=11)
    axes[1, 0].text(-0.04, 0.5, "seg24 labels", transform=axes[1, 0].transAxes, color="white",
                    rotation=90, ha="right", va="center", fontsize=11)
    handles = [Patch(facecolor=c, label=name) for name, c in legend.items()]
    fig.legend(handles=handles, loc="center right", frameon=False, labelcolor="white",
               fontsize=9, title="seg24 structures\n(right side lighter)", title_fontsize=9)
    plt.setp(fig.legends[0].get_title(), color="white")
    fig.suptitle(f"FNOReg synthetic brain phantom: 2D coronal slices, seed {args.seed} "
                 f"(160 x 192, radiological view)", color="white", fontsize=12)
    fig.subplots_adjust(left=0.04, right=0.84, top=0.9, bottom=0.02, wspace=0.04, hspace=0.06)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=90, facecolor=fig.get_facecolor())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
