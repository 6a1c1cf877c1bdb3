"""The rate-limited progress tracker (peer.swarm.overrides.progress) on a real hivemind DHT: per-step records are
held back for ``min_report_interval``, a new epoch goes out at once."""

from __future__ import annotations

import time

import hivemind
import pytest
import torch
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.timed_storage import get_dht_time

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.overrides.progress import ThrottledProgressTracker

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


def make_tracker(dht: hivemind.DHT, interval: float, **kwargs) -> ThrottledProgressTracker:
    return ThrottledProgressTracker(
        dht=dht, prefix=PREFIX, target_batch_size=10**9, start=True, min_report_interval=interval, **kwargs
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


def test_a_peer_with_one_local_step_per_global_step_keeps_its_record_in_the_dht(dht):
    """hivemind's reporter stores a record only while the peer has reported samples in the current or the previous
    global epoch (``ProgressTracker._progress_reporter``: ``last_report_epoch``), so the first samples of every epoch
    must reach it. Found by bench/swarm.py (sync, 2 peers): with one local step per global step, each step came less
    than the interval after the epoch's zero-sample record, was held back, the reporter stopped storing after two
    epochs, and 60 s later both peers' records had expired: "Found no active peers", global steps with local
    gradients only."""
    # hivemind's periodic refresh (every metadata_expiration / 2, here 60 s) would store the newest record anyway;
    # in a swarm each epoch's record wakes the reporter first and restarts that wait, so it never comes
    tracker = make_tracker(dht, interval=600.0, metadata_expiration=120.0)
    try:
        for epoch in range(1, 6):
            with tracker.pause_updates():
                tracker.update_epoch(epoch)  # at once: a new epoch
            reporter_took_it(tracker)  # as in a real step: the reporter reads the zero record before the samples
            tracker.report_local_progress(epoch, 4)  # at once: the epoch's first samples
            reporter_took_it(tracker)
            tracker.report_local_progress(epoch, 8)  # held back: more samples within the interval
        assert wait_for(dht, (5, 4), timeout=20) == (5, 4), "the peer's record stopped following its epochs"
        assert (tracker.reports_published, tracker.reports_held) == (10, 5)
    finally:
        tracker.shutdown()


def reporter_took_it(tracker: ThrottledProgressTracker, timeout: float = 30.0) -> None:
    """Waits until hivemind's reporter thread has woken for the last published report and read it."""
    deadline = time.monotonic() + timeout
    while tracker.should_report_progress.is_set():
        assert time.monotonic() < deadline, "the progress reporter never woke"
        time.sleep(0.01)
    time.sleep(0.2)  # it reads local_progress right after clearing the event, in the same coroutine step


def test_without_a_limit_every_report_is_published(dht):
    tracker = make_tracker(dht, interval=0.0)
    try:
        for step in range(1, 201):
            tracker.report_local_progress(0, 4 * step)
        assert (tracker.reports_published, tracker.reports_held) == (200, 0)
        assert wait_for(dht, (0, 800)) == (0, 800)
    finally:
        tracker.shutdown()


def test_the_peers_reads_of_swarm_progress_are_at_most_progress_refresh_max_apart(dht):
    """``swarm.progress_refresh_max`` reaches hivemind's tracker: a peer whose swarm is far from the next global step
    (hivemind would wait its 10 s maximum) reads the swarm's progress again within the configured bound, and a peer
    that sees no one retries as often. Why it matters: until that read, a peer that started a moment before the
    others' first record counts only its own samples and can take global steps alone."""
    spec = SwarmSpec(target_batch_size=10**9, progress_refresh_max=1.5)
    model = torch.nn.Linear(4, 1)
    opt = build_swarm_optimizer(
        dht, PREFIX, spec, list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1), None, 4
    )
    # the other peer: its own DHT node (and so its own signing key), as in a real swarm
    other_dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=dht.get_visible_maddrs())
    other = ThrottledProgressTracker(
        dht=other_dht,
        prefix=PREFIX,
        target_batch_size=10**9,
        start=True,
        min_report_interval=0.0,
        private_key=RSAPrivateKey(),
    )
    try:
        assert opt.opt.tracker.global_progress.num_peers == 0
        assert opt.opt.tracker.global_progress.next_fetch_time - get_dht_time() <= 1.5
        other.report_local_progress(0, 4)
        deadline = time.monotonic() + 30
        while opt.opt.tracker.global_progress.num_peers == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        progress = opt.opt.tracker.global_progress
        assert progress.num_peers == 1, "the peer never saw the other's progress record"
        assert progress.next_fetch_time - get_dht_time() <= 1.5
    finally:
        other.shutdown()
        other_dht.shutdown()
        opt.shutdown()


def test_a_progress_refresh_below_hiveminds_minimum_is_refused_before_anything_starts(dht):
    spec = SwarmSpec(progress_refresh_max=0.1)
    model = torch.nn.Linear(4, 1)
    with pytest.raises(UserError, match=r"need swarm.progress_refresh_max >= 0.5 \(seconds\), got 0.1"):
        build_swarm_optimizer(
            dht, PREFIX, spec, list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1), None, 4
        )


@pytest.mark.parametrize("chunk_timeout, sender", [(None, 1.5), (12.0, 12.0)])
def test_chunk_timeout_reaches_every_averagers_all_reduce(dht, chunk_timeout, sender):
    """``swarm.chunk_timeout`` is each all-reduce's sender timeout (a reducer's is twice it), in the gradient and the
    state averager alike; unset, hivemind's default, ``matchmaking_time``."""
    spec = SwarmSpec(matchmaking_time=1.5, chunk_timeout=chunk_timeout)
    model = torch.nn.Linear(4, 1)
    opt = build_swarm_optimizer(
        dht, PREFIX, spec, list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1), None, 4
    )
    try:
        for averager in (opt.opt.grad_averager, opt.opt.state_averager):
            assert averager.allreduce_kwargs["sender_timeout"] == sender
            assert averager.allreduce_kwargs["reducer_timeout"] == 2 * sender
    finally:
        opt.shutdown()


def test_a_chunk_timeout_that_is_not_positive_is_refused_before_anything_starts(dht):
    model = torch.nn.Linear(4, 1)
    with pytest.raises(UserError, match=r"need swarm.chunk_timeout > 0 \(seconds\) or null, got 0.0"):
        build_swarm_optimizer(
            dht,
            PREFIX,
            SwarmSpec(chunk_timeout=0.0),
            list(model.parameters()),
            lambda p: torch.optim.SGD(p, lr=0.1),
            None,
            4,
        )


def test_a_lone_sync_peer_counts_its_global_steps_as_taken_on_its_own_gradients(dht):
    """``GuardedOptimizer.gradient_steps_local`` is what ``bench/swarm.py`` reports as "alone": a peer with nobody to
    average with takes each global step on its own gradients, and the counters say so."""
    spec = SwarmSpec(target_batch_size=8, matchmaking_time=1.0)
    model = torch.nn.Linear(4, 1)
    opt = build_swarm_optimizer(
        dht, PREFIX, spec, list(model.parameters()), lambda p: torch.optim.SGD(p, lr=0.1), None, 4
    )
    try:
        for _ in range(6):  # 6 local steps of 4 samples: 3 global steps of 8
            model(torch.randn(4, 4)).pow(2).mean().backward()
            opt.step(4)
        assert opt.global_step == 3
        assert (opt.opt.gradient_steps, opt.opt.gradient_steps_local) == (3, 3)
    finally:
        opt.shutdown()
