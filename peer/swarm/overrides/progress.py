"""hivemind's progress tracker with its per-step DHT records rate-limited.

Why: ``hivemind.optim.ProgressTracker.report_local_progress`` wakes the reporter on every local step, and the
reporter stores a signed record in the DHT each time. With steps of a few milliseconds to a few hundred
milliseconds that is 3–300 stores per second per peer: measured by ``bench/swarm.py`` at 0.9 MB/s of DHT traffic for
four peers of a small model, more than the averaging rounds themselves, and CPU time (signing, RPCs) taken from
training. Nothing needs them that often: every peer extrapolates the others' progress from the samples/s their last
record carries (``ProgressTracker._parse_swarm_progress_data``), and a peer's own samples count towards its view of
the swarm at once, without a record.

What stays immediate: the first record of a new epoch and a reset (samples not going up), so that the swarm learns at
once that a peer has moved to the next global step; and the epoch's first samples. hivemind's reporter stores a
record only while the peer has reported samples in the current or the previous epoch (``last_report_epoch`` in
``ProgressTracker._progress_reporter``), so a peer whose every sample report was held back (one local step per
global step, less than the interval after the epoch's zero-sample record) stopped storing after two epochs, its
record expired and the swarm took global steps alone (found by ``bench/swarm.py``, sync, 2 peers). The periodic
refresh (``metadata_expiration / 2``) is hivemind's.
"""

from __future__ import annotations

import asyncio
import time

from hivemind.optim.progress_tracker import ProgressTracker
from hivemind.utils import get_dht_time


class ThrottledProgressTracker(ProgressTracker):
    """A ``ProgressTracker`` that publishes local progress at most once per ``min_report_interval`` seconds, except
    when the epoch changes, the accumulated samples go down, or the epoch's first samples arrive, which are published
    at once."""

    def __init__(self, *args, min_report_interval: float = 1.0, **kwargs):
        self.min_report_interval = min_report_interval  # validated by build_swarm_optimizer (one-line UserError)
        self._last_report = -float("inf")
        self.reports_published = self.reports_held = 0  # counted for tests and benchmarks
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        """hivemind 1.1.12 ``ProgressTracker.run``, plus: the loop's leftover tasks are cancelled and awaited, and the
        loop closed. Why: ``_progress_fetcher``'s ``shutdown_checker`` task (and the reporter's last ``store_task``)
        is never awaited; when the fetcher returned first, the loop stopped with it pending and asyncio logged "Task
        was destroyed but it is pending!" when it was collected, at a peer's clean exit."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(asyncio.gather(self._progress_reporter(), self._progress_fetcher()))
        finally:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.close()
            self.shutdown_complete.set()

    def report_local_progress(self, local_epoch: int, samples_accumulated: int, update_global_samples: bool = True):
        previous = self.local_progress
        now = time.monotonic()
        urgent = (
            local_epoch != previous.epoch
            or samples_accumulated <= previous.samples_accumulated
            or previous.samples_accumulated == 0  # keeps hivemind's reporter storing (module docstring)
        )
        if urgent or now - self._last_report >= self.min_report_interval:
            self._last_report = now
            self.reports_published += 1
            super().report_local_progress(local_epoch, samples_accumulated, update_global_samples)
            return
        # hivemind's bookkeeping without waking the reporter (setting its event and clearing it again races with the
        # reporter thread, which then publishes anyway): our own view of the swarm counts the samples at once
        self.reports_held += 1
        extra = samples_accumulated - previous.samples_accumulated
        if update_global_samples and local_epoch == previous.epoch == self.global_progress.epoch:
            self.global_progress.samples_accumulated += extra
        self.performance_ema.update(task_size=extra)  # extra > 0 here: no gain in samples is urgent
        # what _get_local_progress builds, without pydantic's validation of every field on every step
        self.local_progress = previous.copy(
            update=dict(
                samples_accumulated=samples_accumulated,
                samples_per_second=self.performance_ema.samples_per_second,
                time=get_dht_time(),
            )
        )

    def announce(self) -> None:
        """Stores this peer's progress record now, with no samples yet.

        Why: hivemind's reporter stores a record only once the peer has reported samples (``last_report_epoch`` in
        ``ProgressTracker._progress_reporter``), so at start-up every peer's tracker sees no one but itself, counts
        only its own samples, and can take global steps alone before the others' first records arrive. Two peers
        that did ended an epoch apart and averaged gradients across the two epochs until hivemind called one out of
        sync (the peer_kill fault scenario). ``peer.swarm.loop.wait_for_peers`` announces each peer and waits until
        the trackers see each other, so the first global step counts every present peer's samples."""
        self.dht.store(
            key=self.training_progress_key,
            subkey=self._local_public_key,
            value=self.local_progress.dict(),
            expiration_time=get_dht_time() + self.metadata_expiration,
        )

    def refresh_now(self, timeout: float) -> int:
        """Makes the fetcher read the swarm's progress now instead of at its next scheduled time (up to
        ``max_refresh_period`` away) and waits for that read; returns the number of peers the tracker sees."""
        with self.lock_global_progress:
            self.fetched_global_progress_this_epoch.clear()
            self.global_progress.next_fetch_time = get_dht_time()
        self.global_state_updated.set()  # wakes the fetcher, which then finds its next fetch due
        self.fetched_global_progress_this_epoch.wait(timeout)
        return self.global_progress.num_peers
