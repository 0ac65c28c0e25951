"""The layering of the code base: every import of a project module points down.

    entry scripts (train_*.py, evaluate_*.py, register.py)
        -> engine/                      run machinery
            -> models/, data/, losses/  side by side, none imports another
                -> utils/               the ground: imports nothing of the project but itself

Read from the source with ``ast`` (imports inside functions count too), so a test fails on the
first upward or sideways import, naming the file and line.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "models", "data", "losses", "utils")
ENTRY_SCRIPTS = ("train_2d.py", "train_3d.py", "evaluate_2d.py", "evaluate_3d.py", "register.py", "sweep.py")
# What each layer may import of the project (its own package is always allowed).
ALLOWED = {
    "engine": {"models", "data", "losses", "utils"},
    "models": {"utils"},
    "data": {"utils"},
    "losses": {"utils"},
    "utils": set(),
    "scripts": {"engine"},
}


def project_imports(path):
    """(line, top-level project package) of every absolute import of ``path`` that names one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue  # relative imports stay inside their own package
        out += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PACKAGES]
    return out


def violations(layer, paths):
    own = set() if layer == "scripts" else {layer}
    may = ", ".join(sorted(ALLOWED[layer])) or "nothing of the project"
    return [f"{p.relative_to(REPO)}:{line} imports {pkg} ({layer} may import {may})"
            for p in paths for line, pkg in project_imports(p) if pkg not in ALLOWED[layer] | own]


@pytest.mark.parametrize("layer", PACKAGES)
def test_packages_import_only_lower_layers(layer):
    paths = sorted((REPO / layer).rglob("*.py"))
    assert paths, f"no modules found in {layer}/"
    assert violations(layer, paths) == []


def test_entry_scripts_import_only_engine():
    paths = [REPO / name for name in ENTRY_SCRIPTS]
    assert violations("scripts", paths) == []
    assert all(any(pkg == "engine" for _, pkg in project_imports(p)) for p in paths)


def test_the_check_sees_upward_imports(tmp_path):
    """The reader itself: absolute imports count, inside functions too; relative ones do not."""
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom . import sibling\n\n\ndef f():\n    from engine.training import train_main\n"
                      "    import models.warp\n")
    assert project_imports(module) == [(6, "engine"), (7, "models")]
