"""The rate-limited progress tracker (peer.swarm.progress) on a real hivemind DHT: per-step records are held back
for ``min_report_interval``, a new epoch goes out at once."""

from __future__ import annotations

import time

import hivemind
import pytest

from peer.swarm.progress import ThrottledProgressTracker

PREFIX = "progress-test"


def published(dht: hivemind.DHT) -> tuple[int, int] | None:
    """(epoch, samples_accumulated) of the one peer's progress record in the DHT, or None."""
    found = dht.get(f"{PREFIX}_progress", latest=True)
    if found is None or not isinstance(found.value, dict) or not found.value:
        return None
    (entry,) = found.value.values()
    return entry.value["epoch"], entry.value["samples_accumulated"]


def wait_for(dht: hivemind.DHT, want: tuple[int, int], timeout: float = 30.0) -> tuple[int, int] | None:
    deadline = time.monotonic() + timeout
    seen = published(dht)
    while seen != want and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = published(dht)
    return seen


@pytest.fixture
def dht():
    node = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    yield node
    node.shutdown()


def make_tracker(dht: hivemind.DHT, interval: float) -> ThrottledProgressTracker:
    return ThrottledProgressTracker(
        dht=dht, prefix=PREFIX, target_batch_size=10**9, start=True, min_report_interval=interval
    )


def test_per_step_records_are_held_back_and_a_new_epoch_goes_out_at_once(dht):
    tracker = make_tracker(dht, interval=600.0)
    try:
        tracker.report_local_progress(0, 4)
        assert wait_for(dht, (0, 4)) == (0, 4)  # the first report is published
        for step in range(2, 201):
            tracker.report_local_progress(0, 4 * step)
        assert (tracker.reports_published, tracker.reports_held) == (1, 199)
        time.sleep(3.0)
        assert published(dht) == (0, 4), "a held-back per-step report reached the DHT"
        with tracker.pause_updates():
            tracker.update_epoch(1)  # hivemind's path at a global step: samples reset, epoch + 1
        assert wait_for(dht, (1, 0)) == (1, 0)
    finally:
        tracker.shutdown()


def test_without_a_limit_every_report_is_published(dht):
    tracker = make_tracker(dht, interval=0.0)
    try:
        for step in range(1, 201):
            tracker.report_local_progress(0, 4 * step)
        assert (tracker.reports_published, tracker.reports_held) == (200, 0)
        assert wait_for(dht, (0, 800)) == (0, 800)
    finally:
        tracker.shutdown()
