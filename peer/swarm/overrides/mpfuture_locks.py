"""hivemind's process-wide MPFuture locks, replaced by locks that the kernel releases when their holder dies.

Replaces (hivemind 1.1.12, ``hivemind/utils/mpfuture.py``) the class attributes ``MPFuture._update_lock`` and
``SharedBytes._lock``: two ``multiprocessing.Lock`` objects made at import and inherited by every process hivemind
forks (the DHT, each averager). Every process that answers another's future (the DHT answering ``run_coroutine``,
an averager answering ``step``) takes ``_update_lock`` around its write to the asker's pipe; every new MPFuture takes
``SharedBytes._lock``. A POSIX semaphore stays taken when its holder dies, so a process killed inside either block
leaves the whole process tree waiting for good. hivemind kills its own children: an averager that does not exit
within ``shutdown_timeout`` is terminated (``DecentralizedAverager.shutdown``), and the cancels of its last round
are sent under ``_update_lock`` while it exits. The next answer from the DHT process then blocks inside its event
loop: the DHT answers nothing more, and the peer's next ``dht.run_coroutine`` (which has no timeout) waits forever.
``tests/peer/swarm/test_mpfuture_locks.py`` shows it: a child killed while it holds the lock, and a DHT that then
never answers. (The growth-switch test's intermittent hang, first suspected to be this, turned out to be the DHT
process ending on a request it could not read: ``peer.swarm.overrides.dht_process``.)

The replacement, ``DeathReleasedLock``, is an fcntl record lock on an unlinked file that every process of the tree
shares through an inherited descriptor: the kernel drops a process's record locks when it exits, however it exits,
and a fork does not inherit them. Record locks do not exclude the threads of one process, so each process also
holds a ``threading.Lock``, made anew in each process (a thread that held the parent's at the fork would leave the
child's copy taken).

Install it with ``install()`` in the main process before hivemind forks anything (``peer.swarm.dht.start_dht``
does, and tests/conftest.py for the processes a test starts by hand): a child forked earlier would go on using the
old lock while the parent used the new one, so ``install`` refuses (and logs) while the process has live
``multiprocessing`` children.
"""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import tempfile
import threading
from types import TracebackType

from hivemind.utils.mpfuture import MPFuture, SharedBytes

logger = logging.getLogger(__name__)


class DeathReleasedLock:
    """A lock across the processes forked after it was made, released by the kernel when a holder dies (see the
    module docstring). Not picklable: hivemind forks its children and keeps these locks as class attributes."""

    def __init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix="warmswarm-lock-")
        os.unlink(path)  # the descriptor keeps the file; nothing is left behind when the tree exits
        self._fd = fd
        self._pid = os.getpid()
        self._threads = threading.Lock()

    def _thread_lock(self) -> threading.Lock:
        if os.getpid() != self._pid:  # first use in a forked child: its copy of the parent's lock may be taken
            self._pid, self._threads = os.getpid(), threading.Lock()
        return self._threads

    def acquire(self, block: bool = True, timeout: float = -1) -> bool:
        threads = self._thread_lock()
        if not threads.acquire(block, timeout):
            return False
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX if block else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            threads.release()
            return False
        except BaseException:
            threads.release()
            raise
        return True

    def release(self) -> None:
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock().release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __reduce__(self):
        raise TypeError("DeathReleasedLock is shared through fork only")


def installed() -> bool:
    """Whether this process's hivemind uses the death-released locks."""
    return isinstance(MPFuture._update_lock, DeathReleasedLock) and isinstance(SharedBytes._lock, DeathReleasedLock)


def install() -> bool:
    """Puts ``DeathReleasedLock`` in place of hivemind's two process-wide MPFuture locks, once per process tree.
    Returns whether they are in place; False (with a warning) when this process already has live
    ``multiprocessing`` children, which would keep the old locks."""
    if installed():
        return True
    children = multiprocessing.active_children()
    if children:
        logger.warning(
            "hivemind's MPFuture locks not replaced: %d child processes started before would keep the old ones",
            len(children),
        )
        return False
    MPFuture._update_lock = DeathReleasedLock()
    SharedBytes._lock = DeathReleasedLock()
    return True
