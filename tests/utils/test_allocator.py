"""Freed memory kept for reuse (utils/allocator.py): page faults of a repeated step, the switch.

Each case runs in a fresh process: the allocator's settings are process-wide and cannot be undone.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.allocator import _glibc

REPO = Path(__file__).resolve().parents[2]
GLIBC = _glibc() is not None


def _huge_pages_always():
    """Transparent huge pages for every mapping: a fresh block then faults in 2 MiB pages."""
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False

# A step like a 3D layer's: 8 MiB blocks and one of 40 MiB, above the largest mmap threshold
# glibc adapts to (32 MiB), so by default that one is mapped fresh, and faulted in, every step.
STEP = """
import resource, sys
sys.path.insert(0, {repo!r})
import torch
from utils.allocator import retain_freed_memory
applied = retain_freed_memory()
assert retain_freed_memory() == applied  # idempotent
torch.set_num_threads(1)
def step():
    blocks = [torch.ones(2 * 2**20) for _ in range(3)] + [torch.ones(10 * 2**20)]  # written
    del blocks
for _ in range(6):  # the heap settles within a few steps
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _run(keep):
    env = dict(os.environ, FNOREG_KEEP_FREED_MEMORY="1" if keep else "0")
    out = subprocess.run([sys.executable, "-c", STEP.format(repo=str(REPO))], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", float(out[1])


def test_switched_off_by_the_environment():
    applied, _ = _run(keep=False)
    assert not applied


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
@pytest.mark.skipif(_huge_pages_always(), reason="the default's faults are counted in 4 KiB pages")
def test_a_repeated_step_stops_faulting_in_fresh_pages():
    applied, faults = _run(keep=True)
    _, default_faults = _run(keep=False)
    assert applied
    # 40 MiB is 10240 pages of 4 KiB.
    assert default_faults >= 10000
    assert faults < 1000


# A freed 64 MiB block below a live one: kept by the heap (not at its top), until released.
RELEASE = """
import sys
sys.path.insert(0, {repo!r})
import torch
from utils.allocator import release_freed_memory, retain_freed_memory
assert retain_freed_memory()
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = torch.ones(16 * 2**20)  # 64 MiB, written
pin = torch.ones(2**20)  # above it in the heap
del big
kept = resident()
released = release_freed_memory()
print(released, (kept - resident()) / 2**20)
"""


@pytest.mark.skipif(not GLIBC, reason="the settings are glibc's")
def test_release_hands_kept_memory_back():
    env = dict(os.environ, FNOREG_KEEP_FREED_MEMORY="1")
    out = subprocess.run([sys.executable, "-c", RELEASE.format(repo=str(REPO))], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[0] == "True"
    assert float(out[1]) > 48  # MiB of the freed 64 back with the kernel


def test_every_script_sets_the_process_up(monkeypatch):
    import utils.cli as cli

    calls = []
    monkeypatch.setattr(cli, "retain_freed_memory", lambda: calls.append(1))
    assert cli.run_cli(lambda argv: 7, []) == 7
    assert calls == [1]
