"""glibc allocator settings for month-long processes: few malloc arenas, and freed memory handed back to the OS.

Why: hivemind's averager processes allocate and free a whole all-reduce's buffers every global step from several
threads. glibc gives each thread its own arena (up to 8 per core) and keeps freed pages in them, so their RSS swung
by +-60 MiB between samples and crept upward over the hour-long soak (``bench/faults.py soak``). Capping the arenas
(the effect of ``MALLOC_ARENA_MAX``, which only works when set before the process starts) and trimming after each
round are the usual remedies. Forked children (hivemind's DHT and averagers) inherit the cap, so it is set before
they start. Elsewhere than glibc (macOS, musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
DEFAULT_ARENAS = 2


@cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library if it is glibc (it has ``malloc_trim``), else None. Cached: loading is idempotent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Caps glibc's malloc arenas for this process and the processes it forks later; True if it was applied."""
    if arenas < 1:
        raise ValueError(f"need at least 1 malloc arena, got {arenas}")
    libc = _glibc()
    if libc is None:
        logger.debug("not glibc: malloc arenas left as they are")
        return False
    applied = bool(libc.mallopt(M_ARENA_MAX, arenas))
    logger.debug("malloc arenas capped at %d: %s", arenas, applied)
    return applied


def release_free_memory() -> bool:
    """Returns the allocator's free pages to the OS (``malloc_trim(0)``); True if any memory was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
