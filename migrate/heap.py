"""The emulator process's own heap: freed numpy arrays kept for reuse.

This models nothing in Xen; it is about the memory of the process that runs xmig. Its
hot paths allocate and free many arrays of 1 to 32 MiB: a span's PFNs, types and
tokens, a restore group's temporaries, a write window. glibc's malloc gives such a
block back to the kernel when it is freed (it maps blocks above a threshold that starts
at 128 KiB, and trims the heap's free top above twice that), so the next array of the
same size is fresh memory, faulted in again 4 KiB at a time: at 1 GiB of guest the
faults cost about a third of a whole run.

``keep_freed_arrays`` asks glibc (``mallopt``) to serve blocks up to 32 MiB, its own
largest automatic threshold, from the heap, and to keep up to 256 MiB of freed heap
for reuse. Larger blocks (the P2M's and token tables' pools grow by ``mremap`` and are
not malloc's) are unaffected. Where the C library is not glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import os

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

#: Blocks up to this size come from the heap (glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Freed heap kept at its top before it is returned to the kernel.
TRIM_THRESHOLD = 256 << 20

_done: bool | None = None


def keep_freed_arrays() -> bool:
    """Tune this process's malloc as the module docstring says (once; later calls do
    nothing). True if glibc took the settings."""
    global _done
    if _done is not None:
        return _done
    _done = False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        glibc = False
    if not glibc:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
