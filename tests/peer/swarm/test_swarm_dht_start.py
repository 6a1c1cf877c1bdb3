"""Starting a DHT never hangs past its stated timeout, even when the DHT process dies before it reports.

hivemind's own wait has no timeout: CI once hung 300 s on a DHT child that aborted at start-up (in gRPC's fork
handler, a race with the in-process coordinator's gRPC threads). ``start_dht`` polls the child and replaces one that
died; here the child really dies: it exits inside its first signed request to the bootstrap peer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from hivemind.utils.auth import AuthorizerBase

from peer.config import PeerSettings
from peer.errors import UserError
from peer.swarm.dht import READY_GRACE_S, START_ATTEMPTS, start_dht, visible_maddrs

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class DiesOnFirstRequest(AuthorizerBase):
    """Runs inside the DHT process: its bootstrap ping is the first request it signs. With ``deaths``, only that
    many DHT processes die (counted in files, since each is a new fork)."""

    def __init__(self, tally: Path | None = None, deaths: int = 0):
        self.tally, self.deaths = tally, deaths

    async def sign_request(self, request, service_public_key) -> None:
        if self.tally is None:
            os._exit(7)
        if self.tally.exists() and self.tally.stat().st_size >= self.deaths:
            return None
        with open(self.tally, "ab") as f:
            f.write(b"x")
        os._exit(7)

    async def validate_request(self, request) -> bool:
        return True

    async def sign_response(self, response, request) -> None:
        return None

    async def validate_response(self, response, request) -> bool:
        return True


def p2pd_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(entry, "comm").read_text().strip() == "p2pd":
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.timeout(300)
def test_a_dht_process_that_dies_while_starting_gives_one_line_within_the_timeout():
    bootstrap = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    try:
        before = p2pd_pids()
        started = time.monotonic()
        with pytest.raises(UserError, match=r"the DHT process died while starting \(exit code 7\) \(tried 3 times\)"):
            start_dht(
                PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(bootstrap)),
                authorizer=DiesOnFirstRequest(),
                startup_timeout=30,
            )
        assert time.monotonic() - started < START_ATTEMPTS * (30 + READY_GRACE_S)
        deadline = time.monotonic() + 30  # p2pd notices its parent's death through its closed control socket
        while p2pd_pids() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not p2pd_pids() - before, "the dead DHT's p2pd outlived it"
    finally:
        bootstrap.shutdown()


@pytest.mark.timeout(300)
def test_a_dht_process_that_died_while_starting_is_replaced_and_the_new_one_joins(tmp_path):
    bootstrap = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    try:
        tally = tmp_path / "deaths"
        dht = start_dht(
            PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(bootstrap)),
            authorizer=DiesOnFirstRequest(tally, deaths=1),
            startup_timeout=30,
        )
        try:
            assert tally.read_bytes() == b"x"  # the first process died; the second joined
            assert dht.is_alive() and dht.store("k", "v", time.time() + 60)
            assert bootstrap.get("k", latest=True).value == "v"
        finally:
            dht.shutdown()
    finally:
        bootstrap.shutdown()
