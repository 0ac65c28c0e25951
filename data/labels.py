"""Label schemes of the neurite-OASIS release (seg4, seg24, seg35).

Label ids and names follow the release's FreeSurfer colour tables. ``seg24`` exists only for the
2D slices and ``seg35`` only for the 3D volumes; ``seg4`` (tissue classes) exists for both.
"""

from __future__ import annotations

from utils.errors import ConfigError

# The left-hemisphere structures of each scheme, in id order; the right-hemisphere ids follow
# the midline ones and repeat the left list in the same order (that is how the release numbers
# them: seg24 14-24 = right of 1-8, 11-13; seg35 20-35 = right of 1-10, 14-19).
_SEG24_LEFT_A = ["cerebral-WM", "cortex", "lateral-ventricle", "inf-lat-ventricle", "thalamus",
                 "caudate", "putamen", "pallidum"]
_SEG24_MIDLINE = ["3rd-ventricle", "brain-stem"]
_SEG24_LEFT_B = ["hippocampus", "ventral-DC", "choroid-plexus"]

_SEG35_LEFT_A = ["cerebral-WM", "cortex", "lateral-ventricle", "inf-lat-ventricle",
                 "cerebellum-WM", "cerebellum-cortex", "thalamus", "caudate", "putamen",
                 "pallidum"]
_SEG35_MIDLINE = ["3rd-ventricle", "4th-ventricle", "brain-stem"]
_SEG35_LEFT_B = ["hippocampus", "amygdala", "accumbens", "ventral-DC", "vessel",
                 "choroid-plexus"]


def _sided_scheme(left_a: list[str], midline: list[str], left_b: list[str]) -> dict[int, str]:
    names = ([f"L-{n}" for n in left_a] + midline + [f"L-{n}" for n in left_b]
             + [f"R-{n}" for n in left_a + left_b])
    return {i + 1: name for i, name in enumerate(names)}


SCHEMES: dict[str, dict[int, str]] = {
    "seg4": {1: "cortex", 2: "subcortical-GM", 3: "white-matter", 4: "CSF"},
    "seg24": _sided_scheme(_SEG24_LEFT_A, _SEG24_MIDLINE, _SEG24_LEFT_B),
    "seg35": _sided_scheme(_SEG35_LEFT_A, _SEG35_MIDLINE, _SEG35_LEFT_B),
}

# Which schemes the release provides per dimension; the first one is the default.
SCHEMES_FOR_DIM: dict[int, tuple[str, ...]] = {2: ("seg24", "seg4"), 3: ("seg35", "seg4")}

# seg4 tissue class of each fine structure (side prefix removed), as the release derives it:
# checked voxel by voxel against the release's seg35 -> seg4 maps.
_TISSUE = {
    "cortex": 1, "cerebellum-cortex": 1,
    "thalamus": 2, "caudate": 2, "putamen": 2, "pallidum": 2, "hippocampus": 2, "amygdala": 2,
    "accumbens": 2, "vessel": 2, "choroid-plexus": 2,
    "cerebral-WM": 3, "cerebellum-WM": 3, "brain-stem": 3, "ventral-DC": 3,
    "lateral-ventricle": 4, "inf-lat-ventricle": 4, "3rd-ventricle": 4, "4th-ventricle": 4,
}


def default_scheme(dim: int) -> str:
    """Return the release's detailed label scheme for ``dim`` ("seg24" in 2D, "seg35" in 3D)."""
    return SCHEMES_FOR_DIM[dim][0]


def check_scheme(scheme: str, dim: int, key: str = "data_config.label_scheme") -> str:
    """Return ``scheme`` if the release provides it for ``dim``, else raise ConfigError."""
    allowed = SCHEMES_FOR_DIM[dim]
    if scheme not in allowed:
        raise ConfigError(f"{key} = {scheme!r} is not available in {dim}D; "
                          f"use one of {', '.join(map(repr, allowed))}")
    return scheme


def label_id(scheme: str, structure: str) -> int:
    """Id of a fine structure (e.g. ``"L-thalamus"``) in ``scheme``; seg4 maps it to its tissue.

    Parameters
    ----------
    scheme : str
        "seg4", "seg24" or "seg35".
    structure : str
        A structure name as used by seg24/seg35, with its ``L-``/``R-`` prefix where sided.

    Returns
    -------
    int
        The label id, or 0 when the scheme has no such structure (it then counts as background,
        as in the release, where seg24 drops the structures a coronal slice rarely shows).
    """
    if scheme == "seg4":
        return _TISSUE[structure.removeprefix("L-").removeprefix("R-")]
    ids = {name: i for i, name in SCHEMES[scheme].items()}
    return ids.get(structure, 0)
