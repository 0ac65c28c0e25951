"""Session-wide setup shared by every test folder."""

import os
import tempfile
from pathlib import Path

from utils.allocator import retain_freed_memory

# The scripts keep freed memory for reuse (utils.allocator, set in run_cli); the suite runs under
# the same settings from its first test, so no test's allocator depends on which ran before it.
retain_freed_memory()

# Temporary files in memory when the machine has room there. The tests write hundreds of small
# experiments, and every checkpoint, weights and JSON file is written atomically with fsync
# (utils.fileio); on a disk that stalls (this project's CI machines do) each fsync can take
# seconds, which made the suite's time swing between 7 and 13 minutes. A tmpfs makes fsync free
# and the files are the same. Skipped when TMPDIR is set or /dev/shm is small or absent (a
# container's default 64 MB would fill up); the suite needs a few hundred MB.
_SHM = Path("/dev/shm")
if "TMPDIR" not in os.environ and _SHM.is_dir() and os.access(_SHM, os.W_OK):
    _stat = os.statvfs(_SHM)
    if _stat.f_bavail * _stat.f_frsize >= 2 * 2**30:
        os.environ["TMPDIR"] = str(_SHM)  # for subprocesses too
        tempfile.tempdir = None  # re-read TMPDIR on the next gettempdir()
