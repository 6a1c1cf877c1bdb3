"""At start-up hivemind's progress tracker sees a peer only once it has samples, so each peer counted only its own
samples and could take global steps alone before the others appeared (the start-up race of the peer_kill fault
scenario: two peers ended an epoch apart). ``ThrottledProgressTracker.announce`` stores a record before the first
sample and ``refresh_now`` reads the swarm at once: this is what ``peer.swarm.loop.wait_for_peers`` waits on."""

from __future__ import annotations

import hivemind
import pytest
from hivemind.utils.crypto import RSAPrivateKey

from peer.swarm.overrides.progress import ThrottledProgressTracker


@pytest.fixture
def two_idle_trackers():
    """Two peers' progress trackers of one run, on two DHTs over loopback, each with its own key (as two processes
    have); neither has reported a sample."""
    dhts, trackers = [], []
    try:
        first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
        dhts.append(first)
        initial = [str(a) for a in first.get_visible_maddrs()]
        dhts.append(hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=initial))
        for dht in dhts:
            # refreshes far apart: without refresh_now the second read would come 30 s later
            trackers.append(
                ThrottledProgressTracker(
                    dht,
                    "startup",
                    64,
                    private_key=RSAPrivateKey(),
                    max_refresh_period=30,
                    default_refresh_period=30,
                    start=True,
                )
            )
        yield trackers
    finally:
        for tracker in trackers:
            tracker.shutdown()
        for dht in dhts:
            dht.shutdown()


@pytest.mark.timeout(120)
def test_announced_peers_are_in_each_others_tracker_before_any_sample(two_idle_trackers):
    a, b = two_idle_trackers
    assert a.refresh_now(timeout=5.0) == 0, "hivemind stores no record before a peer has samples"
    a.announce()
    b.announce()
    assert a.refresh_now(timeout=5.0) == 2
    assert b.refresh_now(timeout=5.0) == 2
    assert a.global_progress.samples_accumulated == b.global_progress.samples_accumulated == 0
