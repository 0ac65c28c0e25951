"""The README's baseline table: every registered model and preset is listed, with its exact count."""

import pytest

from models import build_model, count_parameters
from models.registry import MODELS


def test_every_baseline_preset_is_listed(readme_counts):
    for name in ("voxelmorph", "fouriernet", "transmorph"):
        if name not in MODELS:
            continue
        for preset in MODELS[name].presets:
            for dim in (2, 3):
                assert (name, preset, dim) in readme_counts, f"README.md must list {name}/{preset} {dim}D"


@pytest.mark.parametrize("preset, dim", [("small", 2), ("3d", 3)])
def test_plain_fno_counts(preset, dim, readme_counts):
    count = count_parameters(build_model("fno", {"preset": preset}, dim))
    assert readme_counts.get(("fno", preset, dim)) == count
