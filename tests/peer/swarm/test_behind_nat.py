"""A volunteer behind NAT (``nat_network``: a home namespace behind an iptables-masquerading router): with
``--client_mode`` it trains and the coordinator counts its samples; without, it is told in one line what to do,
instead of being put in averaging groups that wait out their timeouts on it."""

from __future__ import annotations

import os
import sys

import pytest

from bench.faultlib.procs import CHILD_ENV, ROOT, Coordinator, TinyModel, prepare_run
from peer.children import ProcessSet
from tests.peer.swarm.nat_network import nat_network

pytestmark = [
    pytest.mark.slow,
    pytest.mark.requires_tool("ip", "iptables"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def home_peer(procs: ProcessSet, net, coordinator: Coordinator, name: str, *extra: str):
    argv = [sys.executable, "-m", "peer", "join", "--coordinator", coordinator.url, "--no_status", "--peer_name",
            name, "--work_dir", str(procs.work / name), "--host_maddrs", "/ip4/0.0.0.0/tcp/0", *extra]  # fmt: skip
    return procs.start(name, net.run_in_home(argv), env=CHILD_ENV, cwd=ROOT)


@pytest.mark.timeout(900)
def test_behind_nat_client_mode_contributes_and_without_it_gets_one_line_advice(tmp_path):
    run = prepare_run(tmp_path / "run", "nat", TinyModel(target_batch_size=16))
    with nat_network() as net, ProcessSet(tmp_path / "procs") as procs:
        coordinator = Coordinator(procs, run, tmp_path / "data", checkpoint_every=10**6, host=net.up_ip)
        coordinator.start()

        # without --client_mode: refused at start-up, one line, before any round
        lost = home_peer(procs, net, coordinator, "unreachable")
        lost.wait_until(lambda: None if lost.alive() else True, 300, "the unreachable peer to exit")
        assert lost.proc.returncode != 0
        advice = [line for line in lost.text().splitlines() if "--client_mode" in line]
        assert advice and f"dialled {net.router_ip} at TCP port" in advice[0], lost.tail()
        assert "Traceback" not in lost.text(), lost.tail()

        # with --client_mode: trains, and the coordinator counts what it trained
        volunteer = home_peer(procs, net, coordinator, "behind-nat", "--client_mode")
        coordinator.wait_for("samples from the peer behind NAT", lambda p: p.get("samples_total", 0) > 0, 420)
        assert volunteer.alive(), volunteer.tail()
        peers = coordinator.get("/api/v1/peers")["peers"]
        assert [p["name"] for p in peers if p["samples"] > 0] == ["behind-nat"], peers
