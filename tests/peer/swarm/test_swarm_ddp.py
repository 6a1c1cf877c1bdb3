"""A multi-GPU peer on CPU: ``torchrun --nproc-per-node 2 -m peer join`` (gloo) as real processes, with and without
a normal peer; the ranks must stay bit-identical, train with the swarm, stop together and leave nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peer.__main__ import main as peer_main
from peer.children import Child, ProcessSet, sessions_pids
from peer.swarm.ddp import RankInfo, _buckets, rank_from_env
from tests.peer.swarm.tiny_runs import join_args, tiny_run, write_run_files

REPO = Path(__file__).resolve().parents[3]
TORCHRUN = Path(sys.executable).with_name("torchrun")
RUN = "ddptest"
# no compression: peers that averaged the same gradients end bit-identical, which the digests check
TINY = tiny_run(
    RUN,
    target_batch_size=48,
    matchmaking_time=5,  # rounds on 2 loaded cores: a 2 s matchmaking window sometimes missed the other peer
    averaging_timeout=60,
    compression="none",
    load_state_timeout=30,
)
LEFT = re.compile(r"left the swarm at global step (\d+): (\d+) local steps, (\d+) samples.*params ([0-9a-f]{16})")
FOLLOWED = re.compile(r"rank 1 of 2 left with its group at global step (\d+): (\d+) local steps.*params ([0-9a-f]{16})")


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    return write_run_files(tmp_path_factory.mktemp("ddp"), TINY)


def children_of(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


def alive_in(sessions: set[int]) -> list[int]:
    return [p for pids in sessions_pids(sessions).values() for p in pids]


@pytest.fixture
def procs(tmp_path):
    """torchrun starts every rank in a session of its own, so killing torchrun's session alone would leave the ranks
    (and rank 0's p2pd) running: ``Child.watch`` records the ranks' sessions, and the set reaps them all at the end
    (SIGKILL at once)."""
    with ProcessSet(tmp_path, grace=0) as p:
        yield p


def start(procs: ProcessSet, name: str, cmd: list[str]) -> Child:
    """``cmd`` from the repository root, logging to ``<tmp>/<name>.log``."""
    return procs.start(name, cmd, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, cwd=REPO)


def join_cmd(run_files: Path, work: Path, *extra: str, group: bool) -> list[str]:
    launcher = [str(TORCHRUN), "--nproc-per-node", "2", "-m"] if group else [sys.executable, "-m"]
    return [
        *launcher,
        *join_args(run_files, work),
        "--host_maddrs",
        "/ip4/127.0.0.1/tcp/0",
        *extra,
    ]


def finish(child: Child, sessions: set[int], timeout: float = 120) -> str:
    """Waits for exit 0; then nothing may be left in any session the process tree had (``Child.watch``)."""
    try:
        rc = child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"hung: {child.tail(4000)}") from None
    assert rc == 0, child.tail(4000)
    deadline = time.monotonic() + 10  # hivemind's DHT child and p2pd may take a moment after the parent's exit
    while alive_in(sessions) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert alive_in(sessions) == [], "a rank, p2pd or helper outlived the peer"
    return child.text()


def test_rank_from_env_and_buckets():
    assert rank_from_env({}) is None and rank_from_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    assert rank_from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"}) == RankInfo(2, 4, 0)
    tensors = [torch.zeros(10), torch.zeros(10), torch.zeros(10, dtype=torch.float64), torch.zeros(100)]
    assert list(_buckets(tensors, cap=100)) == [[0, 1], [2], [3]]  # by dtype, and by size (one tensor may exceed)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_rank_peer_trains_with_a_normal_peer_and_all_end_identical(run_files, procs, tmp_path, capsys):
    """The group (gloo, 2 ranks) starts the swarm; a normal peer joins it (through the real CLI entry point, in this
    process); both wait for each other, then average every global step to the end. The two ranks, and the two peers,
    end at the same global step, the ranks bit for bit equal; the group reports 2 x batch samples per step."""
    steps = 4
    both = ("--max_steps", str(steps), "--wait_for_peers", "2")  # every global step with both peers
    saved = {name: tmp_path / f"{name}.safetensors" for name in ("group", "peer")}
    group = start(
        procs, "group", join_cmd(run_files, tmp_path / "g", *both, "--save_params", str(saved["group"]), group=True)
    )
    maddr = group.wait_for_line(re.compile(r"visible at (\S+)"), 300).group(1)
    sessions = group.watch()
    assert len(sessions) >= 3, sessions  # torchrun's session and one per rank
    argv = join_cmd(
        run_files, tmp_path / "p", *both, "--initial_peers", maddr, "--save_params", str(saved["peer"]), group=False
    )
    assert peer_main(argv[3:]) == 0  # drop "python -m peer"
    peer_text = capsys.readouterr().out
    # after its last step the group may wait out a round (2 x 60 s) with the peer that already left: seen in CI
    group_text = finish(group, sessions, 300)
    p_step, p_local, _, _ = LEFT.search(peer_text).groups()
    g_step, g_local, g_samples, g_digest = LEFT.search(group_text).groups()
    f_step, f_local, f_digest = FOLLOWED.search(group_text).groups()
    assert int(p_step) == int(g_step) == int(f_step) == steps
    assert g_digest == f_digest, "the two ranks of the multi-GPU peer drifted apart"
    assert int(g_local) == int(f_local) > 0 and int(g_samples) == 2 * 4 * int(g_local)
    # both trained from the first round on (--wait_for_peers); equal parameters mean they averaged every round
    assert int(p_local) > 0
    # The group's parameters against the other peer's: the same tensors, and finite. Not asserted equal within
    # rounding yet: on 2 cores at load 30-60 (2026-11-23) two plain `peer join` peers run exactly like this (no
    # torchrun) also ended 1.3e-3 apart, and the group and the peer 1e-3 to 3e-3, so the gap is in the shared swarm
    # stack under load, not in the group; the group's own ranks are bit-identical (digests above).
    g, p = load_file(saved["group"]), load_file(saved["peer"])
    assert g.keys() == p.keys() and all(torch.isfinite(t).all() for t in g.values())


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_a_signal_to_one_rank_stops_the_whole_group_cleanly(run_files, procs, tmp_path):
    """SIGTERM to the follower alone: the stop travels to rank 0 in the next step, both leave after the same step,
    rank 0 leaves the DHT, torchrun and both ranks exit 0, and no p2pd or rank is left in the session."""
    group = start(procs, "group", join_cmd(run_files, tmp_path / "g", group=True))
    group.wait_for_line("starting at global step", 300)
    time.sleep(3)  # a few local steps
    sessions = group.watch()
    followers = [pid for pid in children_of(group.pid) if rank_of(pid) == "1"]
    assert len(followers) == 1, [(pid, rank_of(pid)) for pid in children_of(group.pid)]
    os.kill(followers[0], signal.SIGTERM)
    text = finish(group, sessions, 120)
    assert "another rank of this peer was asked to stop" in text
    g_step, g_local, _, g_digest = LEFT.search(text).groups()
    f_step, f_local, f_digest = FOLLOWED.search(text).groups()
    assert (g_step, g_local, g_digest) == (f_step, f_local, f_digest)


def rank_of(pid: int) -> str | None:
    """The torchrun RANK in a process's environment (None for torchrun itself, p2pd and other helpers)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    if not any(b"peer join" in c or c == b"join" for c in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")):
        return None
    values = [e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")]
    return values[0] if values else None
