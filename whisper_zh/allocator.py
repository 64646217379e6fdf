"""Keep freed memory for reuse: what makes CPU inference fast on Linux.

CTranslate2 (and PyTorch) on a CPU allocate their working buffers afresh in every model
call and free them after it: for whisper-base, an encoder call over 8 windows of 30 s
asks for gigabytes in buffers of tens of megabytes (each head's 1500 x 1500 attention is
9 MB). glibc's malloc serves such buffers with ``mmap`` and gives them back to the kernel
on ``free``, so every call page-faults all of that memory in again: on 2 cores the
kernel spent about as long zeroing pages as the model spent computing (bench/README.md,
"Threads and memory").

:func:`reuse_freed_memory` tells glibc to keep what is freed, in one arena, for the next
call, as ONNX Runtime's arena or PyTorch's CUDA caching allocator do for their own
buffers: the process keeps its peak memory instead of returning it between calls.
It is process-wide, so only an edge calls it (``whisper-zh transcribe``, ``app.py``, the
benchmarks), first thing, before any thread starts.
"""

from __future__ import annotations

import ctypes
import logging
import os

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt(3)'s parameter numbers
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

# The largest value mallopt takes (a C int). Once the free top of the heap passes it,
# glibc trims it and the faults come back: beyond the working set of any model this
# project serves on a CPU (whisper-base's peak is ~1.7 GB of resident memory in all).
_TRIM_THRESHOLD = 2**31 - 1

_SETTINGS = {
    # One arena: a thread's own arena lives in 64 MB heaps that go back to the kernel as
    # they empty, whatever the thresholds say; in the main arena they stay.
    "M_ARENA_MAX": (_M_ARENA_MAX, 1),
    "M_MMAP_MAX": (_M_MMAP_MAX, 0),  # large buffers from the heap, not from mmap
    "M_TRIM_THRESHOLD": (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),  # the heap's free top is kept
}


def _glibc() -> bool:
    try:
        return bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError, AttributeError):  # not a POSIX system, or not glibc
        return False


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse: one arena for every thread, no
    ``mmap`` for large buffers, and the heap's free top kept up to 2 GB.

    Call it before any thread starts: glibc fixes its arena limit the first time it
    needs one, and a thread that already has an arena of its own keeps it.

    Returns:
        True when glibc accepted every setting; False where the C library is not glibc
        (macOS, Windows, musl), which changes nothing, or when it refused one (logged).
    """
    if not _glibc():
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    refused = [name for name, (param, value) in _SETTINGS.items() if mallopt(param, value) != 1]
    if refused:
        logger.warning("glibc refused mallopt %s: freed memory is partly returned to the kernel", refused)
    return not refused
