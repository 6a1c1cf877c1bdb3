"""``peer.swarm.overrides.dht_process``: a request the DHT process cannot unpickle must not end it.

The request is made to fail the way the growth-switch test's did: unpickling it raises EOFError, as multiprocessing's
``rebuild_connection`` does when the process that sent an MPFuture's pipe has exited. Each DHT runs in a fresh
interpreter in its own session, so that hivemind's DHT, which dies, cannot leave its p2pd behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys
    from multiprocessing.reduction import ForkingPickler
    import hivemind
    from hivemind.utils.mpfuture import MPFuture
    from peer.swarm.overrides.dht_process import TolerantDHT

    def sender_gone():
        raise EOFError  # what rebuild_connection raises for a pipe whose sender exited

    class PipeOfAnExitedSender:
        def __reduce__(self):
            return sender_gone, ()

    if __name__ == "__main__":
        kind = TolerantDHT if sys.argv[1] == "tolerant" else hivemind.DHT
        dht = kind(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        assert dht.get("before", return_future=True).result(timeout=60) is None
        request = ("_get", [], dict(key="x", latest=True, future=PipeOfAnExitedSender()))
        dht._outer_pipe.send_bytes(bytes(ForkingPickler.dumps(request)))
        try:
            dht.get("after", return_future=True).result(timeout=30)
            print("ANSWERED", flush=True)
        except TimeoutError:
            print("HUNG alive=%s" % dht.is_alive(), flush=True)
        dht.shutdown()
    """
)


def run_script(kind: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, kind], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # a dead DHT's p2pd, if any is left in the session
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]


@pytest.mark.timeout(300)
def test_hivemind_dht_process_ends_on_a_request_it_cannot_read():
    """The hazard itself, so the next test is known to exercise it (and a hivemind that fixes it shows)."""
    assert run_script("hivemind") == "HUNG alive=False"


@pytest.mark.timeout(300)
def test_tolerant_dht_drops_the_request_and_answers_the_next():
    assert run_script("tolerant") == "ANSWERED"
