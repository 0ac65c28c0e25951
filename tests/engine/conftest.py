"""Fixtures shared by the engine tests."""

import pytest


@pytest.fixture()
def exp_root(tmp_path, monkeypatch):
    """A fresh experiments folder for one test (``FNOREG_EXPERIMENTS_DIR``)."""
    monkeypatch.setenv("FNOREG_EXPERIMENTS_DIR", str(tmp_path / "experiments"))
    return tmp_path / "experiments"
