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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
DEFAULT_ARENAS = 2
# bytes. Well below hivemind's all-reduce parts (DEFAULT_PART_SIZE_BYTES: 512 KiB on the wire; an fp16 part decodes
# to 1 MiB; a tensor's last part and the parts at peer boundaries are smaller), which executor threads allocate and
# free in the averagers' second arena every round: with the threshold at 1 MiB that arena swung by 10-44 MiB between
# samples (/proc/PID/smaps, in the soak bench) and the averagers' RssAnon by up to 9 % in waves
AVERAGER_MMAP_THRESHOLD = 128 << 10


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


def map_large_allocations(threshold: int = AVERAGER_MMAP_THRESHOLD) -> bool:
    """Serves every allocation of ``threshold`` bytes or more from its own ``mmap`` in this process, so that freeing
    it returns the memory to the OS at once; True if applied.

    Why: glibc starts at 128 KiB but raises the threshold each time such a block is freed (up to 32 MiB), after
    which a round's parts and buffers come from the heap and their pages stay with the process until a trim, in
    whatever pattern the round left. Fixing the threshold (which also stops the raising) keeps an averager's RSS
    at what it holds. Meant for the averager processes, whose large blocks live for a round; a training process
    allocating activations every step would pay page faults for it."""
    if not 0 < threshold <= 32 << 20:  # glibc's HEAP_MAX_SIZE / 2 on 64-bit
        raise ValueError(f"mmap threshold must be in (0, 32 MiB], got {threshold}")
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> bool:
    """Returns the allocator's free pages to the OS (``malloc_trim(0)``); True if any memory was released."""
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


@dataclass
class PeriodicRelease:
    """``release_free_memory`` at most once every ``every`` seconds, for a loop to call after each of its steps.

    Why: the training process frees a step's activations and gradients (sizes vary with the batch's sequence
    length) and glibc keeps the freed pages. A CPU training loop of a small transformer held 90-170 MiB of them
    between steps, which a trim returned (480 -> 343 MiB, 20-100 ms a trim on a busy 2-core machine), and the peers'
    main processes crept upward over the hour-long soak. Once a minute bounds both: the retained pages and the cost
    (the trim plus faulting the pages back in, ~0.2 % of the time)."""

    every: float = 60.0
    clock: Callable[[], float] = time.monotonic
    release: Callable[[], bool] = release_free_memory
    _last: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.every > 0:
            raise ValueError(f"the release period must be > 0 seconds, got {self.every}")

    def maybe(self) -> bool:
        """Releases if ``every`` seconds have passed since the last release (the first call only starts the
        clock: right after start-up nothing has been freed yet); True if it released this time."""
        now = self.clock()
        if self._last is None:
            self._last = now
            return False
        if now - self._last < self.every:
            return False
        self._last = now
        self.release()
        return True


TRACE_ENV = "WARMSWARM_TRACE_MEMORY"  # a directory: trace the averager processes' Python allocations into it
TRACE_EVERY_ENV = "WARMSWARM_TRACE_MEMORY_EVERY"  # seconds between snapshots (default 300)
TRACE_FRAMES = 8


def start_memory_trace(role: str, environ: dict[str, str] | None = None) -> Path | None:
    """A diagnostic for slow growth: when ``WARMSWARM_TRACE_MEMORY`` names a directory, traces this process's
    Python allocations (``tracemalloc``, 8 frames) and writes a snapshot there at once and then every
    ``WARMSWARM_TRACE_MEMORY_EVERY`` seconds, as ``<role>-<pid>-<n>.tracemalloc``; returns the first file, or None
    when not asked. ``bench/faults.py soak --trace_memory DIR`` sets it for every peer and ``soak --trace_report
    DIR`` lists what grew between each process's first and last snapshot.

    Why a hook in the process itself: the averagers are forks that no outside tool here can attach to, and what
    RSS cannot say is whether growth is Python objects (pymalloc arenas, which ``malloc_trim`` cannot return) or C
    buffers. Tracing costs time on every Python allocation: for diagnosis, not for month-long runs."""
    import os
    import threading
    import tracemalloc

    environ = os.environ if environ is None else environ
    where = environ.get(TRACE_ENV)
    if not where:
        return None
    every = float(environ.get(TRACE_EVERY_ENV, "300"))
    if not every > 0:
        raise ValueError(f"{TRACE_EVERY_ENV} must be > 0 seconds, got {every}")
    out = Path(where)
    out.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(TRACE_FRAMES)
    pid = os.getpid()

    def dump(n: int) -> Path:
        path = out / f"{role}-{pid}-{n:04d}.tracemalloc"
        tracemalloc.take_snapshot().dump(str(path))
        return path

    first = dump(0)

    def keep_dumping() -> None:
        n = 1
        while True:
            time.sleep(every)
            try:
                dump(n)
            except OSError as e:  # a full or removed directory ends the trace, not the averager
                logger.warning("memory trace stopped: %s", e)
                return
            n += 1

    threading.Thread(target=keep_dumping, name="memory-trace", daemon=True).start()
    logger.info("tracing Python allocations into %s every %.0f s", out, every)
    return first
