"""``peer.lifetime``: forked children die with their parent (with their own exec'd children), and a lock left held by
a dead holder's leftovers is taken over. Each case runs in a fresh interpreter: the at-fork hook cannot be removed
from a process once installed, and the parent must be SIGKILLed."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from peer.errors import UserError
from peer.lifetime import ProcessLock

REPO = Path(__file__).resolve().parents[2]

FAMILY = textwrap.dedent(
    """
    import json, multiprocessing, os, subprocess, sys, threading, time
    from peer.lifetime import bind_children_to_this_process

    if sys.argv[1] == "bound":
        bind_children_to_this_process()

    def dht_like(queue):
        # like hivemind's DHT process: a Python fork that starts a non-Python daemon (p2pd)
        daemon = subprocess.Popen(["sleep", "1000"])
        queue.put((os.getpid(), daemon.pid))
        time.sleep(1000)

    queue = multiprocessing.Queue()
    first = multiprocessing.Process(target=dht_like, args=(queue,), daemon=True)
    first.start()
    # a second child forked from a worker thread that then ends: it must live on while the parent lives
    second = []
    worker = threading.Thread(target=lambda: second.append(
        multiprocessing.Process(target=time.sleep, args=(1000,), daemon=True)) or second[0].start())
    worker.start(); worker.join()
    child, daemon = queue.get(timeout=60)
    print(json.dumps([child, daemon, second[0].pid]), flush=True)
    time.sleep(1000)
    """
)


def _start_family(mode: str) -> tuple[subprocess.Popen, list[int]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", FAMILY, mode], stdout=subprocess.PIPE, text=True, env=env)
    pids = json.loads(proc.stdout.readline())
    return proc, pids


def _alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while _alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _alive(pids)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.timeout(120)
def test_children_and_their_daemons_die_within_seconds_of_a_sigkilled_parent():
    proc, pids = _start_family("bound")
    try:
        time.sleep(1.0)  # the worker thread that forked the second child has ended: that child must still be alive
        assert _alive(pids) == pids
        proc.kill()
        proc.wait(10)
        assert _wait_gone(pids, timeout=5.0) == []
    finally:
        proc.kill()
        _kill_all(pids)


@pytest.mark.timeout(120)
def test_without_the_binding_the_same_family_outlives_its_parent():
    """The control: what every peer and coordinator did before (the DHT fork, its p2pd, the averagers lived on)."""
    proc, pids = _start_family("unbound")
    try:
        proc.kill()
        proc.wait(10)
        assert _wait_gone(pids, timeout=3.0) == pids
    finally:
        _kill_all(pids)


HOLDER = textwrap.dedent(
    """
    import os, sys, time
    from peer.lifetime import ProcessLock

    lock = ProcessLock(__import__("pathlib").Path(sys.argv[1]), "test lock is in use").acquire()
    child = os.fork()  # inherits the flock, like hivemind's forks; no binding here: it stays when the parent dies
    if child == 0:
        time.sleep(1000)
        os._exit(0)
    print(child, flush=True)
    time.sleep(1000)
    """
)


@pytest.mark.timeout(120)
def test_a_lock_left_to_a_dead_holders_children_is_taken_over_with_one_line(tmp_path, caplog):
    path = tmp_path / "x.lock"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    leftover = int(holder.stdout.readline())
    try:
        with pytest.raises(UserError, match=rf"test lock is in use \(pid {holder.pid}\)"):
            ProcessLock(path, "test lock is in use").acquire()
        holder.kill()
        holder.wait(10)
        assert _alive([leftover]) == [leftover]  # holds the lock still
        with caplog.at_level(logging.WARNING, logger="peer.lifetime"):
            lock = ProcessLock(path, "test lock is in use").acquire()
        lines = [r.getMessage() for r in caplog.records if r.name == "peer.lifetime"]
        assert len(lines) == 1 and f"holder (pid {holder.pid}) is gone" in lines[0] and str(leftover) in lines[0]
        assert _wait_gone([leftover], timeout=5.0) == []
        assert path.read_text().strip() == str(os.getpid())
        lock.release()
        ProcessLock(path, "test lock is in use").acquire().release()  # released for the next one
    finally:
        holder.kill()
        _kill_all([leftover])


OLD_HOLDER = textwrap.dedent(
    """
    import fcntl, sys, time
    handle = open(sys.argv[1], "ab")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("locked", flush=True)
    time.sleep(1000)
    """
)


@pytest.mark.timeout(60)
def test_a_lock_that_does_not_name_its_holder_is_not_taken_over(tmp_path):
    """A holder that wrote no pid (an older version) may be alive: refuse rather than stop it."""
    path = tmp_path / "y.lock"
    holder = subprocess.Popen([sys.executable, "-c", OLD_HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=r"^test lock is in use$"):
            ProcessLock(path, "test lock is in use").acquire()
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait(10)
