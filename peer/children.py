"""Peers, coordinators and other commands as child processes: started in sessions of their own, waited for, and
always reaped with everything they started. One harness for the tests, the benchmarks and ``scripts/demo.py``.

It imports only the standard library and nothing else of warmswarm (a test checks it), so a script imports it
without torch or hivemind (its ``--help`` stays instant) and without depending on any layer of ``peer``.

What a :class:`ProcessSet` guarantees:

- each child leads a session of its own, so its p2pd daemons and hivemind forks are in it; its stdout and stderr
  go to a log file (an earlier log of the same path is kept under another name), or to a pipe for a supervisor
  that shows them;
- a wait for readiness (a line in the log, or any condition) ends in a :class:`ChildExited` or ``TimeoutError``
  that carries the child's log tail; ``start(..., ready=..., tries=N)`` starts a child that was not ready again,
  at most ``N`` times in all;
- leaving the set (normally, by an exception or by KeyboardInterrupt) stops every child: a signal to each leader
  (SIGTERM unless told otherwise; it lets a peer stop its own p2pd), a grace period, then SIGKILL to every process
  left in the children's sessions, including the sessions of descendants that made their own (torchrun's ranks,
  the demo's children), until none is listed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
POLL_S = 0.3
"""How often a wait looks again (reading a log file costs little; children share 2 cores with the waiter)."""
REAP_S = 30.0
"""How long ``close`` keeps SIGKILLing what is still listed in the sessions before it gives up with a warning."""


class ChildExited(RuntimeError):
    """A child exited before what was waited for happened; the message ends with its log tail."""


@dataclass
class Child:
    """One started process, leader of its own session, and where its output goes (``log`` is None for a pipe)."""

    name: str
    proc: subprocess.Popen
    log: Path | None
    sessions: set[int] = field(default_factory=set)
    """The sessions reaped with this child: its own, and those of descendants seen by :meth:`watch`."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        """The whole log so far ("" for a pipe or a log not written yet)."""
        try:
            return self.log.read_text(errors="replace") if self.log else ""
        except OSError:
            return ""

    def tail(self, chars: int = 3000) -> str:
        return self.text()[-chars:]

    def wait_until(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
        retry_on: tuple[type[BaseException], ...] = (),
        every: float = POLL_S,
    ) -> T:
        """Calls ``check()`` until it returns something other than None and returns that. An exception of a type in
        ``retry_on`` counts as "not yet" (a server that refuses connections while it starts). Raises ChildExited
        when this child exits first (a child that made ``check`` true and then exited is not a failure), and
        TimeoutError after ``timeout`` seconds; both say ``what`` was waited for and end with the log tail."""

        def failure() -> str | None:
            return None if self.alive() else f"{self.name} exited with code {self.proc.returncode}"

        return _poll(check, timeout, what, self.name, failure, self.tail, retry_on, every)

    def wait_for_line(self, needle: str | re.Pattern, timeout: float) -> re.Match | bool:
        """Waits until the log contains ``needle``: the match for a pattern, True for a string."""

        def found() -> re.Match | bool | None:
            text = self.text()
            if isinstance(needle, re.Pattern):
                return needle.search(text)
            return True if needle in text else None

        return self.wait_until(found, timeout, f"no {needle!r} in the log")

    def watch(self) -> set[int]:
        """The sessions of this child's process tree now (its own, and any a descendant made), remembered for the
        reaping: a descendant in a session of its own is found only through its parent, and only while that lives."""
        self.sessions |= descendant_sessions(self.pid)
        return set(self.sessions)

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signals every process group of the child's sessions (the leader, its p2pd and hivemind forks); after a
        SIGKILL, reaps the leader."""
        for sid in sorted(self.sessions):
            try:
                os.killpg(sid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        if signum == signal.SIGKILL:
            try:
                self.proc.wait(REAP_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s (pid %d) did not die after SIGKILL", self.name, self.pid)


@dataclass
class ProcessSet:
    """The children of one test, benchmark or demo, logging into ``work`` by default. A context manager: leaving it
    stops and reaps every child and every session it made (:meth:`close`)."""

    work: Path
    grace: float = 20.0
    """Seconds between the stop signal and SIGKILL; 0: SIGKILL at once, no stop signal."""
    stop_signal: int = signal.SIGTERM
    children: list[Child] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        log: Path | None = None,
        pipe: bool = False,
        die_with_parent: bool = False,
        preexec: Callable[[], None] | None = None,
        ready: Callable[[Child], object | None] | None = None,
        timeout: float = 300.0,
        tries: int = 1,
    ) -> Child:
        """Starts ``argv`` (the whole command) as ``name`` in a session of its own, with ``env`` added to this
        process's environment, output to ``log`` (default ``work/<name>.log``) or, with ``pipe``, to
        ``child.proc.stdout`` (bytes). ``die_with_parent``: the child gets SIGTERM when this process dies, even by
        SIGKILL (Linux PR_SET_PDEATHSIG; a pre-exec hook, so only where this process starts no threads).
        ``preexec`` runs in the child before exec (e.g. joining a cgroup).

        With ``ready``, waits until ``ready(child)`` is not None (:meth:`Child.wait_until`, connection errors count
        as "not yet"); a child that exits or is not ready within ``timeout`` is killed with its sessions and started
        again, ``tries`` times in all, and the last failure is raised."""
        if tries < 1:
            raise ValueError(f"tries must be at least 1, not {tries}")
        for attempt in range(1, tries + 1):
            child = self._spawn(name, argv, env, cwd, log, pipe, die_with_parent, preexec)
            if ready is None:
                return child
            try:
                child.wait_until(lambda c=child: ready(c), timeout, "not ready", retry_on=(OSError,))
                return child
            except (ChildExited, TimeoutError) as e:
                if attempt == tries:
                    raise
                logger.warning("%s, try %d of %d: starting it again", str(e).split("\n", 1)[0], attempt, tries)
                child.watch()
                child.kill_group(signal.SIGKILL)
        raise AssertionError("unreachable")

    def _spawn(self, name, argv, env, cwd, log, pipe, die_with_parent, preexec) -> Child:
        if pipe:
            log = None
        else:
            log = log or self.work / f"{name}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            if log.exists():  # a restarted child keeps its earlier log for the post-mortem
                log.rename(log.with_name(f"{log.stem}.{int(time.time() * 1000)}{log.suffix}"))
        out = subprocess.PIPE if pipe else open(log, "w")  # noqa: SIM115 - the child holds it; ours is closed below
        try:
            proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=dict(os.environ, **(env or {})),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_pre_exec(die_with_parent, preexec),
            )
        finally:
            if not pipe:
                out.close()
        child = Child(name, proc, log, {proc.pid})
        self.children.append(child)
        return child

    def wait_until(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
        retry_on: tuple[type[BaseException], ...] = (),
        every: float = POLL_S,
    ) -> T:
        """:meth:`Child.wait_until` over the whole set: fails when any child exits with a code other than 0 (an
        exit 0 is a child that finished its part), with that child's log tail."""
        failed: list[Child] = []

        def failure() -> str | None:
            failed[:] = [c for c in self.children if c.proc.poll() not in (None, 0)]
            return f"{failed[0].name} exited with code {failed[0].proc.returncode}" if failed else None

        return _poll(check, timeout, what, "", failure, lambda: failed[0].tail() if failed else "", retry_on, every)

    def wait(self, timeout: float) -> list[Child]:
        """Waits up to ``timeout`` seconds in all for every child to exit on its own; returns those still running."""
        return _wait_for_exit(self.children, timeout)

    def close(self, grace: float | None = None) -> list[Child]:
        """Stops every child and reaps every session of theirs: ``stop_signal`` to each live leader, the last
        started first (peers before the coordinator they joined), up to ``grace`` seconds (default ``self.grace``)
        for them to exit, then SIGKILL to every process left in the sessions until none is listed. Returns the
        children that were still running when the grace period ended."""
        grace = self.grace if grace is None else grace
        live = [c for c in self.children if c.alive()]
        for child in live:
            child.watch()  # before any signal: a dead leader's descendants are orphans, found only by their session
        if grace > 0:
            for child in reversed(live):
                try:
                    child.proc.send_signal(self.stop_signal)
                except ProcessLookupError:
                    pass
            _wait_for_exit(live, grace)
        killed = [c for c in live if c.alive()]
        for child in self.children:
            child.kill_group(signal.SIGKILL)
        # A SIGKILLed process is listed (state R/S/D) until the kernel has torn it down, which takes a moment after
        # kill() returns, longer on a loaded machine; and a process may have left its group but not its session.
        # So: until the sessions are empty, SIGKILL what is left and look again.
        deadline = time.monotonic() + REAP_S
        while (left := self.leftovers()) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.05)
        if left:
            logger.warning("processes %s still listed %.0f s after SIGKILL", left, REAP_S)
        return killed

    def leftovers(self) -> list[int]:
        """Every live process of every child's sessions."""
        found = sessions_pids(sorted({sid for child in self.children for sid in child.sessions}))
        return [pid for pids in found.values() for pid in pids]

    def __enter__(self) -> ProcessSet:
        self.work.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_for_exit(children: list[Child], timeout: float) -> list[Child]:
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    return [c for c in children if c.alive()]


def _poll(check, timeout, what, name, failure, tail, retry_on, every):
    deadline = time.monotonic() + timeout
    while True:
        failed = failure()  # looked at before the check: a child that made it true and then exited is not a failure
        try:
            found = check()
        except retry_on:
            found = None
        if found is not None:
            return found
        if failed:
            raise ChildExited(f"{failed}: {what}:\n{tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: {what} within {timeout:.0f} s:\n{tail()}".removeprefix(": "))
        time.sleep(every)


def _pre_exec(die_with_parent: bool, preexec: Callable[[], None] | None) -> Callable[[], None] | None:
    if not die_with_parent:
        return preexec

    def run() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if preexec is not None:
            preexec()

    return run


def _process_table() -> list[tuple[int, int, int, str]]:
    """(pid, parent pid, session, state) of every process, from one walk of /proc (~10 ms here)."""
    rows = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
            except (OSError, IndexError):
                continue
            rows.append((int(entry.name), int(fields[1]), int(fields[3]), fields[0]))
    return rows


def descendant_sessions(pid: int) -> set[int]:
    """The sessions of ``pid`` and of all its live descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for p, parent, _, _ in table:
        children.setdefault(parent, []).append(p)
    tree, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return {sid for p, _, sid, _ in table if p in tree} | {pid}


def sessions_pids(sids: Iterable[int]) -> dict[int, list[int]]:
    """Every live (not zombie) process of each session in ``sids``."""
    out: dict[int, list[int]] = {sid: [] for sid in sids}
    for p, _, sid, state in _process_table():
        if sid in out and state != "Z":
            out[sid].append(p)
    return out


def session_pids(sid: int) -> list[int]:
    """Every live process in session ``sid`` (its leader, p2pd, hivemind forks)."""
    return sessions_pids([sid])[sid]


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
