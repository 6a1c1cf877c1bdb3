"""``python -m peer join`` as a volunteer runs it: real subprocesses, real DHTs, the real objective and data."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import pytest

from peer.__main__ import main as peer_main
from peer.children import ProcessSet
from peer.config import PeerSettings
from peer.swarm.dht import lock_identity, start_dht, visible_maddrs
from peer.swarm.metrics import make_validators, publish_metrics
from tests.peer.swarm.tiny_runs import group_alive, join_args, live_record, tiny_run, write_run_files

REPO = Path(__file__).resolve().parents[3]
RUN = "clitest"
TINY = tiny_run(RUN)


@pytest.fixture(scope="module")
def run_files(tmp_path_factory):
    return write_run_files(tmp_path_factory.mktemp("join"), TINY)


@pytest.fixture(scope="module")
def live_swarm():
    """A DHT node of run ``clitest`` whose one peer publishes a fingerprint no tiny config has."""
    signing = make_validators(RUN)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    hello = live_record(step=4, fingerprint="0123456789abcdef")
    assert publish_metrics(dht, RUN, signing, hello, expiration=600)
    yield visible_maddrs(dht)
    dht.shutdown()


def join_in_process(root: Path, capsys, *extra: str) -> tuple[int, str]:
    """``python -m peer join`` through its real entry point, in this process (saves a 20 s interpreter start)."""
    argv = [
        "join",
        "-c",
        str(root / "run.yaml"),
        "--init_dir",
        str(root / "init"),
        "--work_dir",
        str(root / "work"),
        "--no_status",
        "--startup_timeout",
        "30",
        "--host_maddrs",
        "/ip4/127.0.0.1/tcp/0",
        *extra,
    ]
    code = peer_main(argv)
    return code, capsys.readouterr().err


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_unreachable_initial_peers_fail_with_one_line(run_files, capsys):
    dead = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWFZNX2sY4Y6MteSWdzFB3mVAERrqCVVpHuXxjMJ2wzEoT"
    start = time.monotonic()
    code, err = join_in_process(run_files, capsys, "--initial_peers", dead)
    assert code == 2
    assert "cannot reach any initial peer" in one_error_line(err)
    assert time.monotonic() - start < 90


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_wrong_run_id_fails_within_join_timeout(run_files, live_swarm, capsys):
    start = time.monotonic()
    code, err = join_in_process(
        run_files, capsys, "--initial_peers", *live_swarm, "--set", "run_id=nosuchrun", "--join_timeout", "5"
    )
    assert code == 2
    assert "no peer of run 'nosuchrun'" in one_error_line(err)
    assert time.monotonic() - start < 60


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_model_that_does_not_match_the_swarm_is_refused(run_files, live_swarm, capsys):
    code, err = join_in_process(run_files, capsys, "--initial_peers", *live_swarm, "--join_timeout", "20")
    assert code == 2
    assert "do not match the swarm's" in one_error_line(err)


@pytest.mark.timeout(120)
def test_identity_file_in_use_is_refused(run_files, tmp_path, capsys):
    held = lock_identity(str(tmp_path / "peer.id"))
    try:
        code, err = join_in_process(run_files, capsys, "--identity_path", str(tmp_path / "peer.id"))
    finally:
        held.release()
    assert code == 2
    assert "already in use" in one_error_line(err)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_join_trains_and_a_signal_leaves_cleanly_without_orphans(run_files, tmp_path, signum):
    """SIGINT is Ctrl-C: hivemind sets it to ignored when it starts an averager, so this fails unless the peer
    re-asserts its handler."""
    cmd = [
        sys.executable,
        "-m",
        *join_args(run_files, tmp_path),
        "--identity_path",
        str(tmp_path / "peer.id"),
        "--host_maddrs",
        "/ip4/127.0.0.1/tcp/0",
    ]
    with ProcessSet(tmp_path, grace=0) as procs:  # SIGKILL to whatever is left of the peer's session
        peer = procs.start("peer", cmd, cwd=REPO, log=tmp_path / "log.txt")
        peer.wait_for_line("starting at global step", 180)
        time.sleep(5)  # a few local steps
        peer.proc.send_signal(signum)
        assert peer.proc.wait(90) == 0, peer.tail()
        text = peer.text()
        assert "left the swarm at global step" in text
        local_steps = int(text.split("left the swarm at global step")[1].split(":")[1].split("local steps")[0])
        assert local_steps > 0
        time.sleep(1)
        assert not group_alive(peer.pid), "a p2pd or helper process outlived the peer"

