"""An OOM kill of a main process: a real coordinator and a real peer (``python -m ... start | join``), each SIGKILLed
alone (not its process group, as the kernel's OOM killer does it), leave no process of theirs behind within 10 s,
and the same command then starts again (same identity, same data dir, same ports)."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from bench.faultlib.procs import TRAINING, Coordinator, prepare_run, start_peer
from peer.children import Child, ProcessSet, session_pids

GONE_WITHIN_S = 10.0


def _family(child: Child) -> list[psutil.Process]:
    """The main process's descendants (DHT fork, p2pd, averagers, torch_shm_manager), with their start times so a
    reused pid is not mistaken for a survivor."""
    try:
        return psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _survivors(child: Child, family: list[psutil.Process]) -> list[str]:
    alive = {p.pid: p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    for pid in session_pids(child.pid):  # anything of its session, including what started after the snapshot
        if pid not in alive:
            try:
                alive[pid] = psutil.Process(pid)
            except psutil.NoSuchProcess:
                pass
    return [f"{pid} ({p.name()})" for pid, p in alive.items() if _running(p)]


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _sigkill_main_leaves_nothing(child: Child, what: str) -> None:
    """SIGKILLs the main process alone; asserts that it had processes to leave behind (a DHT fork and p2pd) and that
    none of them is left ``GONE_WITHIN_S`` later."""
    family = _family(child)
    os.kill(child.pid, signal.SIGKILL)  # the main process only: its children are told nothing
    child.proc.wait(30)
    start = time.monotonic()
    while (left := _survivors(child, family)) and time.monotonic() - start < GONE_WITHIN_S:
        time.sleep(0.2)
    took = time.monotonic() - start
    assert len(family) >= 2, f"the {what} had no DHT fork and p2pd to leave behind: {family}"
    assert left == [], f"the killed {what}'s processes still run {took:.1f} s later: {left}\n{child.tail()}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return prepare_run(tmp_path_factory.mktemp("sigkill") / "run", "sigkill")


@pytest.fixture
def coordinator(tmp_path, run):
    """A real coordinator of the run, started; it and every process a test starts beside it (``coordinator.procs``)
    are stopped and reaped at the end."""
    with ProcessSet(tmp_path / "procs") as procs:
        coordinator = Coordinator(procs, run, tmp_path / "data")
        coordinator.start()
        yield coordinator


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sigkilled_peer_leaves_nothing_and_the_same_command_starts_again(coordinator):
    peer = start_peer(coordinator.procs, "peer0", coordinator)
    peer.wait_for_line(TRAINING, timeout=300)

    _sigkill_main_leaves_nothing(peer, "peer")

    again = start_peer(coordinator.procs, "peer0", coordinator)  # the same command: same identity file and work dir
    again.wait_for_line(TRAINING, timeout=300)
    assert "already in use" not in again.text()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_sigkilled_coordinator_leaves_nothing_and_the_same_command_starts_again(coordinator, run):
    _sigkill_main_leaves_nothing(coordinator.child, "coordinator")

    coordinator.start()  # the same command: same data dir, identity and ports
    assert coordinator.get("/api/v1/run")["run_id"] == run.run_id
    assert "in use by another running coordinator" not in coordinator.child.text()
