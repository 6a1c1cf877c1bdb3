"""``GuardedOptimizer``: hivemind.Optimizer with our averagers and progress tracker plugged in.

Replaces (hivemind 1.1.12): ``Optimizer._make_state_averager`` (our state averager, delta rule in sync mode),
``_make_progress_tracker`` (rate-limited records), ``_load_averaged_gradients_into_optimizer_`` and
``_load_local_gradients_into_optimizer`` (counted), ``load_state_from_peers`` (stuck rounds called off, callbacks
after a download); adds ``local_update_step`` (hivemind's local-updates step without the executor round-trip)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import hivemind
from hivemind.optim.state_averager import TrainingStateAverager

from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.progress import ThrottledProgressTracker

logger = logging.getLogger(__name__)


class GuardedOptimizer(hivemind.Optimizer):
    """``hivemind.Optimizer`` whose gradient and state averagers are guarded (gate + robust reduction), and whose
    progress records are rate-limited (``peer.swarm.overrides.progress``)."""

    def __init__(
        self,
        *,
        guard: AveragerGuard,
        kinds: AveragerKinds = AveragerKinds(),
        average_extras: bool = True,
        progress_report_interval: float = 1.0,
        **kwargs,
    ):
        self._guard, self._kinds, self._average_extras = guard, kinds, average_extras
        self._progress_report_interval = progress_report_interval
        self.after_state_load: list[Callable[[], None]] = []  # run after every state download, hivemind's included
        # sync mode: global steps that loaded gradients, and those that fell back to this peer's own (no group, a
        # failed round): a swarm that keeps stepping alone is training N separate models, so benches report it
        self.gradient_steps = self.gradient_steps_local = 0
        if not kwargs.get("use_local_updates", False):
            kwargs["grad_averager_factory"] = partial(kinds.gradient, guard=guard)
        super().__init__(**kwargs)

    def local_update_step(self, batch_size: int) -> None:
        """``step(batch_size=...)`` for local updates whose state averaging hivemind never starts (DiLoCo rounds in
        the background, ``average_state_every`` NEVER): the same bookkeeping in the same order, with the inner
        optimizer stepped in this thread under hivemind's optimizer lock.

        Why: hivemind hands every local step to the state averager's executor thread and waits for it, and checks
        for delayed updates and scheduled averaging that this mode never has; on small models that was most of the
        per-step overhead (cProfile: the executor round-trip 80 % of ``step``). Anything else (out of sync with the
        swarm, an AMP scaler, auxiliary peers) goes through hivemind's ``step``."""
        assert self.use_local_updates and not self.auxiliary and not self.delay_optimizer_step
        if self._should_load_state_from_peers():
            super().step(batch_size=batch_size)  # hivemind's path: "Peer is out of sync", download the state
            return
        progress = self.tracker.local_progress
        self.tracker.report_local_progress(self.local_epoch, progress.samples_accumulated + batch_size)
        with self.state_averager.lock_optimizer:
            self.state_averager.optimizer.step()
        if self.tracker.ready_to_update_epoch:
            self._update_global_epoch(None)

    def _load_averaged_gradients_into_optimizer_(self) -> None:
        self.gradient_steps += 1  # every global step of gradient averaging ends here, the local fallback included
        super()._load_averaged_gradients_into_optimizer_()

    def _load_local_gradients_into_optimizer(self) -> None:
        self.gradient_steps_local += 1
        super()._load_local_gradients_into_optimizer()

    def load_state_from_peers(self, **kwargs) -> None:
        """hivemind's download, then ``after_state_load``. Why: hivemind also calls this by itself when the peer is
        out of sync with the swarm, and DiLoCo's anchor must then follow the downloaded parameters, or the next
        outer step would take the whole jump to the new state as this peer's pseudo-gradient. A background state
        round stuck looking for a group is called off first (``CancellableRounds``): hivemind would wait it out.
        Patience: a healthy group assembles once its leader has waited ``matchmaking_time`` (hivemind's
        ``min_matchmaking_time``); 2 s more covers the join messages on a loaded machine. Every second of it adds
        to a survivor's delay after a kill (which then also waits out one gradient round, ``averaging_timeout``)."""
        patience = self.matchmaking_time + 2.0
        cancelled = self.state_averager.cancel_stuck_rounds(patience)
        if cancelled:
            logger.info(
                "called off %d state round(s) that found no group in %.0f s: downloading the state instead",
                cancelled,
                patience,
            )
        super().load_state_from_peers(**kwargs)
        for callback in self.after_state_load:
            callback()

    def _make_progress_tracker(self, target_batch_size: int, **kwargs) -> ThrottledProgressTracker:
        # the same arguments as hivemind.Optimizer._make_progress_tracker, with the per-step records rate-limited
        return ThrottledProgressTracker(
            dht=self.dht,
            prefix=self.run_id,
            target_batch_size=target_batch_size,
            client_mode=self.client_mode,
            status_loglevel=self.status_loglevel,
            start=True,
            min_report_interval=self._progress_report_interval,
            **kwargs,
        )

    def _make_state_averager(self, **kwargs) -> TrainingStateAverager:
        """The same arguments as hivemind.Optimizer._make_state_averager, plus the guard, and with background state
        rounds applied by the delta rule in sync mode too.

        Why the delta rule: hivemind (``delay_state_averaging``, its default) applies a background round's result by
        copying the averaged parameters and optimizer statistics, as they were when the round began, over ours. A
        round that ended after the next optimizer step had begun thus undid that step, on each peer by its own
        timing: in the ``peer_kill`` fault scenario 10 of 13 rounds did, and peers of the same round ended a step
        apart (73 of 80 tensors 3.5e-4 apart at every sampled step). With the delta rule (hivemind's own for local
        updates) a round adds ``average - ours when it began``, and hivemind then also waits for a round still under
        way before the next optimizer step (``TrainingStateAverager.step``: ``should_wait``), after that step's
        gradient all-reduce: so no step is undone, every peer of a round applies it before the same step, and a
        failed round adds nothing. Waiting before the gradient all-reduce instead (tried first) put the two rounds
        one after the other: 3.9 s per epoch in the scenario against 2.8 s with this and 2.9-3.1 s before. The
        cost: one more copy of the averaged tensors while a round runs."""
        if self.delay_state_averaging:
            kwargs["delta_rule_averaging"] = True
        return self._kinds.state(
            guard=self._guard,
            average_extras=self._average_extras,
            dht=self.dht,
            prefix=f"{self.run_id}_state_averager",
            min_matchmaking_time=self.matchmaking_time,
            allreduce_timeout=self.allreduce_timeout,
            shutdown_timeout=self.shutdown_timeout,
            offload_optimizer=self.offload_optimizer,
            custom_gradients=self.offload_optimizer,
            status_loglevel=self.status_loglevel,
            next_chunk_timeout=self.next_chunk_timeout,
            client_mode=self.client_mode,
            auxiliary=self.auxiliary,
            start=True,
            **kwargs,
        )
