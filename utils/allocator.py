"""The C allocator's settings for a PyTorch process on Linux: keep freed memory for reuse.

PyTorch allocates CPU tensors with the C library's ``malloc`` and keeps no cache of its own.
glibc's default policy suits programs with small, long-lived allocations, not a loop that frees
and re-allocates the same tens of megabytes every step: a block above its adaptive mmap
threshold (128 KiB at start, raised as such blocks are freed) is mapped fresh on every
allocation, and free memory at the top of the heap beyond twice that threshold is handed back
to the kernel. Either way the next step touches new pages, and each 4 KiB page costs a page
fault and a zeroing by the kernel. Measured on a 2-core Xeon with 2 threads (medians):

- FNOReg small inference at 160x192 in a process that runs only it (an evaluation): 2,100 page
  faults per call, 17.2 ms; with the settings below 16 faults, 14.5 ms;
- FNOReg 3D inference at 80x96x112: 690,000 faults and 1.1 s of kernel time per call, 1.51 s;
  with the settings 50,000 faults, 0.93 s;
- FNOReg small training step at 80x96, batch 8: 11,000 faults per step, 140 ms; with the
  settings about 100, 133 ms (three alternated pairs of processes);
- VoxelMorph vxm2 and FNOReg large at 160x192 had no faults either way and kept their speed.

:func:`retain_freed_memory` fixes the mmap threshold at glibc's largest value (32 MiB on a
64-bit system) and raises the trim threshold to 1 GiB, so blocks up to 32 MiB are carved from
the heap and stay there when freed, ready for the next step. Larger blocks (3D activations at
full size) are still mapped fresh each time. The cost: a process keeps up to 1 GiB of freed
heap, beyond its peak, instead of returning it at once (the memory benchmark's peak resident
sets barely moved). Every script calls it at start (:func:`utils.cli.run_cli`), and so do the
benchmarks, for every model alike; ``FNOREG_KEEP_FREED_MEMORY=0`` in the environment turns it
off. Elsewhere (macOS, Windows, musl) it does nothing.
"""

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 2**20  # glibc's maximum on 64-bit systems (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 2**30
ENV_SWITCH = "FNOREG_KEEP_FREED_MEMORY"

_applied = None


def _glibc():
    """The C library when it is glibc, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (ValueError, OSError, AttributeError):
        return None


def retain_freed_memory():
    """Keep freed blocks of up to 32 MiB in the process for reuse (glibc only; idempotent).

    Returns
    -------
    bool
        True when the settings are in force: set now or by an earlier call. False on other C
        libraries, when glibc refused them, or when ``FNOREG_KEEP_FREED_MEMORY=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    if os.environ.get(ENV_SWITCH, "1").strip() == "0":
        _applied = False
        return _applied
    libc = _glibc()
    if libc is None:
        _applied = False
        return _applied
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success; setting either threshold switches off glibc's adaptation.
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _applied
