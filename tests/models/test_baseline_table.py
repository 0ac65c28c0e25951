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


BASELINE_PRESETS = [("fno", "small", 2), ("fno", "3d", 3)] + [
    (name, preset, dim)
    for name, presets in (("voxelmorph", ("vxm1", "vxm2", "huge", "large")), ("fouriernet", ("c16", "c32")),
                          ("transmorph", ("base", "small", "3stage")))
    for preset in presets for dim in (2, 3)]


@pytest.mark.parametrize("name, preset, dim", BASELINE_PRESETS)
def test_parameter_count_matches_readme(name, preset, dim, readme_counts):
    count = count_parameters(build_model(name, {"preset": preset}, dim))
    key = (name, preset, dim)
    assert key in readme_counts, f"README.md must list {name}/{preset} {dim}D ({count:,} parameters)"
    assert readme_counts[key] == count
