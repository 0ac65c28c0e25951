"""Safe file writes and reads: atomic replacement, so a crash never leaves a half-written file."""

import json
import os
from pathlib import Path

import torch

from utils.errors import ConfigError


def _atomic(path, write):
    """Call ``write(tmp_path)``, flush it to disk, then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss only once the folder is synced
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform that cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj, path):
    """``torch.save`` to a temporary file in the same folder, then atomically rename it."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_json(path, obj, default=None):
    """Write ``obj`` as indented JSON atomically (``default``: as for ``json.dumps``)."""
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, default=default) + "\n"))


def read_json(path, what="config file"):
    """Parse a JSON file; a syntax error becomes a one-line ConfigError with line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
