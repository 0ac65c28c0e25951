"""Evaluation output folders: one per checkpoint, size, data and option; data tags never collide."""

from pathlib import Path

from engine.eval_folders import data_tag, output_folder

PHANTOM = {"dataset": "phantom", "root": None, "splits": {"train": [0, 3], "test": [6, 8]}}


def test_output_folder_names_every_option_in_a_fixed_order():
    assert output_folder("x", "final", 160) == Path("x/eval/final_160")
    name = output_folder("x", "epoch3", 80, "val", "oasis-abc123", "eval", 50, "off").name
    assert name == "epoch3_80_oasis-abc123_evalgrid_refine50_repairoff_val"


def test_data_tag_is_none_for_the_trained_data_and_distinct_otherwise():
    assert data_tag(PHANTOM, dict(PHANTOM)) is None
    resplit = {**PHANTOM, "splits": {"train": [5, 8], "test": [2, 4]}}
    tag = data_tag(resplit, PHANTOM)
    assert tag.startswith("phantom-") and len(tag) == len("phantom-") + 6
    # Same folder name at two roots, or an odd name: distinct, file-system-safe tags.
    a = data_tag({**PHANTOM, "dataset": "oasis", "root": "/data/a/neurite oasis"}, PHANTOM)
    b = data_tag({**PHANTOM, "dataset": "oasis", "root": "/data/b/neurite oasis"}, PHANTOM)
    assert a != b and a.startswith("neurite-oasis-") and b.startswith("neurite-oasis-")
