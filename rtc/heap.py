"""Hand memory freed by a large, passing piece of work back to the operating system (after a
stats rollup, after rooms unload).

glibc's allocator keeps what a thread frees in that thread's arena, and a worker thread of a
periodic job (the stats rollup) may get another arena each time: every arena then holds the
job's high-water mark, and the server's resident memory climbs in steps although nothing is
kept. ``malloc_trim(0)`` returns the free pages of every arena. Where the C library has no
such call (musl, macOS), nothing is done.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from collections.abc import Callable

__all__ = ["release_free_memory"]

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the allocator's free pages to the OS; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
