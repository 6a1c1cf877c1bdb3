"""No process outlives the one that started it, whatever signal ended that one (DESIGN.md § Conventions).

A peer or coordinator forks hivemind's DHT process and averagers (``multiprocessing``, fork), and the DHT process
starts p2pd. When the main process is killed with SIGKILL (an OOM kill), none of them is told: they kept running
for minutes, held the identity or data-dir lock (inherited ``flock``), SQLite and the DHT port, and the same command
could not start again.

Two parts:

- :func:`bind_children_to_this_process`: every process forked from here on (and, since the hook is inherited, from
  those in turn) watches its parent. When the parent is gone it stops its own children (p2pd for the DHT process)
  with SIGKILL and kills itself. A watcher thread polling ``getppid`` is used rather than ``PR_SET_PDEATHSIG``:
  the kernel signal fires when the *thread* that forked dies (not the process), and a
  SIGKILL from it would give the DHT process no chance to stop p2pd, which cannot run Python.
- :class:`ProcessLock`: an exclusive lock file that records its holder's pid. A lock still held after its holder
  died (children of the dead process that had not exited yet) is taken over with
  one log line: the leftovers holding the file are stopped, then the lock is taken.

Processes that are not forked from Python (torch's ``torch_shm_manager``) exit on their own about two seconds after
their last client, which these children are, disconnects.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from peer.errors import UserError

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.25
"""How often a child checks its parent: a few syscalls per second, and leftovers gone well within a second."""
TAKEOVER_WAIT_S = 10.0
"""How long a new holder waits for a dead holder's leftovers to let go of the lock after it stopped them."""


@dataclass
class _ForkWatch:
    """The at-fork hooks of one process. ``parent_pid`` is written by the forking thread just before the fork, so
    a child compares ``getppid()`` with the pid it was forked from, not with whatever its parent is by the time it
    first looks (the parent may already be gone)."""

    interval_s: float
    parent_pid: int = 0

    def before_fork(self) -> None:
        self.parent_pid = os.getpid()

    def after_fork_in_child(self) -> None:
        start_parent_watch(self.parent_pid, self.interval_s)


_installed: list[_ForkWatch] = []
"""The process's one set of at-fork hooks: ``os.register_at_fork`` has no unregister, and in-process callers (tests
call ``main()`` many times) must not stack a watcher thread per call in every child."""


def bind_children_to_this_process(interval_s: float = WATCH_INTERVAL_S) -> None:
    """Makes every process forked from now on exit (with its own children) within ``interval_s`` of its parent's
    death. Call it once at the top of a main process, before anything forks; later calls do nothing."""
    if _installed:
        return
    watch = _ForkWatch(interval_s)
    os.register_at_fork(before=watch.before_fork, after_in_child=watch.after_fork_in_child)
    _installed.append(watch)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        # a torchrun rank: its launcher (the elastic agent) stops the ranks when it is stopped, but not when it is
        # SIGKILLed; the ranks hold the peer's identity lock and its DHT
        start_parent_watch(os.getppid(), interval_s)


def start_parent_watch(parent_pid: int, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """Starts a daemon thread that ends this process (and its descendants) once ``parent_pid`` is no longer its
    parent. Also for processes not forked by us that must not outlive their launcher (a torchrun rank)."""
    thread = threading.Thread(
        target=_watch_parent, args=(parent_pid, interval_s), name="warmswarm-parent-watch", daemon=True
    )
    thread.start()
    return thread


def _watch_parent(parent_pid: int, interval_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval_s)
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL, not SIGTERM: the parent is gone, so there is no one to report to, and hivemind's processes may
    ignore or defer SIGTERM (the coordinator's orphaned DHT process did)."""
    children = kill_descendants()
    logger.warning(
        "parent process %d is gone: process %d exits%s",
        parent_pid,
        os.getpid(),
        f" and stopped {len(children)} child process(es)" if children else "",
    )
    os.kill(os.getpid(), signal.SIGKILL)


def kill_descendants(pid: int | None = None) -> list[psutil.Process]:
    """SIGKILLs every descendant of ``pid`` (this process by default), deepest first; returns those it signalled."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for child in reversed(children):
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=2.0)
    return children


@dataclass
class ProcessLock:
    """An exclusive ``flock`` on ``path`` for the holder's lifetime, with the holder's pid written in the file.

    ``flock`` is shared with forked children, so a holder killed with SIGKILL leaves the lock taken until its last
    child exits. :meth:`acquire` tells that apart from a live holder: when the recorded pid is dead (or is not the
    process that holds it: the pid was reused), the processes still holding the file are the dead holder's
    leftovers; they are stopped and the lock is taken over, with one log line.
    """

    path: Path
    what: str
    """Says in an error what the lock protects, e.g. "identity file X is already in use by another running peer"."""
    _handle: IO[bytes] | None = field(default=None, repr=False)

    def acquire(self) -> ProcessLock:
        handle = open(self.path, "a+b")  # noqa: SIM115 - held open for the holder's lifetime
        try:
            if not _try_flock(handle):
                holder = _recorded_pid(handle)
                holding = _processes_holding(self.path)
                # A holder that does not say who it is (written by an older version) is left alone: only a
                # recorded holder that no longer holds the file proves that the rest are leftovers.
                if holder is None or any(p.pid == holder for p in holding):
                    raise UserError(self.what + (f" (pid {holder})" if holder is not None else ""))
                self._take_over(handle, holder, holding)
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n".encode())
            handle.flush()
        except BaseException:
            handle.close()
            raise
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        finally:
            self._handle.close()
            self._handle = None

    def _take_over(self, handle: IO[bytes], holder: int, leftovers: list[psutil.Process]) -> None:
        logger.warning(
            "taking over %s: its holder (pid %s) is gone; stopping %d leftover process(es) of it: %s",
            self.path,
            holder,
            len(leftovers),
            ", ".join(f"{p.pid} ({_name(p)})" for p in leftovers) or "none",
        )
        for proc in leftovers:
            kill_descendants(proc.pid)
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + TAKEOVER_WAIT_S
        while not _try_flock(handle):
            if time.monotonic() > deadline:
                raise UserError(f"{self.what}: its holder (pid {holder}) is gone, its leftovers still hold the lock")
            time.sleep(0.1)


def _try_flock(handle: IO[bytes]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _recorded_pid(handle: IO[bytes]) -> int | None:
    handle.seek(0)
    text = handle.read(32).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _processes_holding(path: Path) -> list[psutil.Process]:
    """The processes (of this user) with ``path`` open, this one excepted."""
    target = os.path.realpath(path)
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if any(f.path == target for f in proc.open_files()):
                found.append(proc)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def _name(proc: psutil.Process) -> str:
    try:
        return proc.name()
    except psutil.Error:
        return "?"
