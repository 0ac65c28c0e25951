"""The C allocator's settings for a PyTorch process on Linux: keep freed memory for reuse.

PyTorch allocates CPU tensors with the C library's ``malloc`` and keeps no cache of its own.
glibc's default policy suits programs with small, long-lived allocations, not a loop that frees
and re-allocates the same megabytes every step: a block above its adaptive mmap threshold
(128 KiB at start, raised as such blocks are freed, at most 32 MiB) is mapped fresh on every
allocation and unmapped when freed, and free memory at the top of the heap beyond twice that
threshold is handed back to the kernel. Either way the next step touches new pages, and each
4 KiB page costs a page fault and a zeroing by the kernel; how many depends on the process's
allocation history, so the same model's time moved from run to run. Measured on a 2-core Xeon,
2 threads, alternated processes, default -> with the settings below:

- FNOReg 3D training step at 80x96x112, batch 1: 1.7-2.6 million faults and 4.5-6.7 s of kernel
  time per step, 9.7-11.5 s -> 0.1-0.3 million faults, 6.4-6.5 s;
- FNOReg 3D inference at 80x96x112: 0.1-0.5 million faults per call, 1.3-1.9 s -> at most
  2,000 faults, 1.1-1.15 s; peak resident set unchanged (2.1-2.3 GiB);
- the 3D config's model (diffeomorphic, fold repair) at 160x192x224: 7.7-9.7 million faults per
  call, 17-21 s -> 0.6-0.8 million, 9.8-10.8 s; peak resident set 3.3 -> 4.0 GiB;
- 2D at 160x192, in a process that runs only inference (an evaluation; three alternated pairs
  on a noisy machine): FNOReg small 2,400 faults per call in two of three processes -> 0-16;
  VoxelMorph vxm2 2,800-4,800 in all three, 24.7-26.2 ms -> none, 15.6-17.8 ms;
- FNOReg small training step at 80x96, batch 8: 140-8,600 faults per step -> 1-120; the step
  times (181-223 against 163-200 ms) were within that machine's noise.

:func:`retain_freed_memory` stops glibc from mapping blocks of their own (``M_MMAP_MAX`` 0) and
raises the trim threshold to 1 GiB. In the main thread, where PyTorch allocates the tensors of
the forward and (on the CPU) the backward pass, every block then comes from the heap and a
freed one stays there for the next step; free memory at the top of the heap is handed back only
beyond 1 GiB, and freed memory below the top never (until the process ends). Other threads
(gloo's under DistributedDataParallel, the OASIS loader's pool) allocate from heaps of their own
of at most 64 MiB: a larger block there is still mapped fresh, and an emptied heap is unmapped.

The cost: a process stays near the peak of its heap for the rest of its life (after a 3D
training step, for the rest of a sweep or an evaluation), and the peak itself rises through
fragmentation (``bench_memory.py``'s training step at 80x96x112: FNOReg 3D +5 %, +9 %
checkpointed, VoxelMorph vxm2 +28 %, 1.7 -> 2.2 GiB). Every script calls it at start
(:func:`utils.cli.run_cli`), and so does every benchmark (``benchmarks.common.set_threads``;
the memory benchmark's children excepted), for every model alike;
``FNOREG_KEEP_FREED_MEMORY=0`` in the environment turns it off. Elsewhere (macOS, Windows, musl)
it does nothing.
"""

import ctypes
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

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
    """Keep freed memory in the process for the next step (glibc only; idempotent).

    Returns
    -------
    bool
        True when freed blocks are kept (``M_MMAP_MAX`` 0), set now or by an earlier call. False
        on other C libraries, when glibc refused it, or when ``FNOREG_KEEP_FREED_MEMORY=0``.
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
    # mallopt returns 1 on success; either setting also switches off glibc's adaptive thresholds.
    # (Where the heap cannot grow, glibc still maps a block as a fallback.)
    _applied = mallopt(M_MMAP_MAX, 0) == 1
    mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied


def release_freed_memory():
    """Hand the heap's free pages back to the kernel now (glibc's ``malloc_trim(0)``).

    For a process that kept freed memory (:func:`retain_freed_memory`) and is about to judge
    from the system's available memory whether a large step fits (``bench_speed.py`` between
    cells): memory it freed but kept would otherwise count as taken. The next allocations
    fault their pages in again. Returns True when glibc released something, False otherwise
    (and on other C libraries, where it does nothing).
    """
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    return libc.malloc_trim(0) == 1
