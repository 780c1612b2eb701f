"""Hand freed heap memory back to the OS (glibc's `malloc_trim`; elsewhere a no-op).

Each window of a long clip allocates and frees a forward pass's activations. glibc keeps freed
blocks below its (adaptive) mmap threshold in the heap, and their fragments add up window after
window, so without a trim a long clip's peak RSS creeps up with its number of windows instead of
staying at one window's.
"""

from __future__ import annotations

import ctypes
import ctypes.util


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_freed_heap() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
