"""The coordinator's main thread asks its DHT process things every turn (the connected peers, the run config
record). A DHT process that stops answering must cost a bounded wait and one WARNING line, never a main thread
parked for good (a coordinator whose p2p daemon had closed ignored SIGTERM that way, 2026-12-07)."""

import json
import logging
import os
import signal
import time

import hivemind
import pytest

from coordinator.dht_node import KNOWN_PEERS_NAME, publish_config, save_known_peers
from peer.config import RunConfig


@pytest.fixture
def two_nodes():
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    second = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                          initial_peers=[str(a) for a in first.get_visible_maddrs()])  # fmt: skip
    try:
        yield first, second
    finally:
        for node in (first, second):
            os.kill(node.pid, signal.SIGCONT)
            node.shutdown()


def test_known_peers_are_saved_from_an_answering_dht(two_nodes, tmp_path):
    first, second = two_nodes
    assert save_known_peers(first, tmp_path) == len(json.loads((tmp_path / KNOWN_PEERS_NAME).read_text())) >= 1


def test_a_dht_process_that_stops_answering_costs_a_bounded_wait_and_one_line(two_nodes, tmp_path, caplog):
    first, _ = two_nodes
    save_known_peers(first, tmp_path)
    before = (tmp_path / KNOWN_PEERS_NAME).read_text()
    os.kill(first.pid, signal.SIGSTOP)  # the DHT process is there but answers nothing
    caplog.set_level(logging.WARNING, logger="coordinator.dht_node")
    began = time.monotonic()
    assert save_known_peers(first, tmp_path, timeout=1.0) is None
    assert publish_config(first, RunConfig(), b"subkey", timeout=1.0) is False
    assert time.monotonic() - began < 10.0
    assert [r.getMessage().split(" within")[0] for r in caplog.records] == [
        "the DHT process did not list its connected peers",
        "the DHT process did not store the run config",
    ]
    assert (tmp_path / KNOWN_PEERS_NAME).read_text() == before  # left as it was
