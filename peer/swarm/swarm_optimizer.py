"""``SwarmOptimizer``: the optimizer a peer's loop drives, whatever its averaging mode (``peer.swarm.modes``):
hivemind's Optimizer plus, in "diloco" mode, the outer step when the global epoch advances, background rounds
(``peer.swarm.overlap``) and the catch-up after a missed one."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import hivemind
from hivemind.averaging.control import AveragingStage
from hivemind.utils import get_dht_time

from peer.swarm.bans import BanBook
from peer.swarm.outer import OuterNesterov
from peer.swarm.overlap import BackgroundRound
from peer.swarm.overrides.optimizer import GuardedOptimizer
from peer.swarm.round_evidence import OutcomeChannel, RoundOutcomes

logger = logging.getLogger(__name__)

CATCH_UP_HOPELESS = 3  # catch-up: donors in a row that are past the missed round without it before we give up


@dataclass
class SwarmOptimizer:
    """hivemind.Optimizer plus, in "diloco" mode, the outer step applied when the global epoch advances."""

    opt: hivemind.Optimizer
    outer: OuterNesterov | None
    outcomes: OutcomeChannel | None = None  # per-round reducer outcomes from the averager processes (bans)
    bans: BanBook | None = None  # set by the session: turns those outcomes into local bans and signed reports
    background: BackgroundRound | None = None  # diloco with swarm.overlap_rounds: the round in flight
    catch_up: bool = False  # momentum_sync "catch_up": a missed round is followed by a state download
    catch_ups: int = 0  # state downloads after missed rounds (logs, tests, benchmarks)

    def __post_init__(self) -> None:
        if isinstance(self.opt, GuardedOptimizer):
            self.opt.after_state_load.append(self._state_replaced)

    @property
    def global_step(self) -> int:
        return self.opt.local_epoch

    @property
    def changes_every_step(self) -> bool:
        """Whether parameters change outside global steps: each local step updates them (diloco's inner steps) or a
        delayed optimizer step lands later. A multi-GPU peer's followers then need them after every step."""
        return self.outer is not None or bool(getattr(self.opt, "delay_optimizer_step", False))

    def step(self, batch_size: int) -> bool:
        """Reports ``batch_size`` samples and steps; returns True when a global step (epoch) was taken."""
        before = self.opt.local_epoch
        if self.background is not None and isinstance(self.opt, GuardedOptimizer):
            self.opt.local_update_step(batch_size)  # hivemind never averages by itself in this mode
        else:
            self.opt.step(batch_size=batch_size)
        advanced = self.opt.local_epoch > before
        outcomes = self.round_outcomes()  # drained even without bans: undrained, the averagers' queue only grows
        if self.bans is not None:
            self.bans.absorb(outcomes)
        if self.outer is None:
            return advanced
        if self.background is None:
            if advanced:
                with self.opt.state_averager.lock_averaged_tensors:  # the anchor is served (get_current_state)
                    self.outer.step()
            return advanced
        if self.background.done():
            self._apply_background(wait=0.0)
        if advanced:
            if self.background.pending:  # the previous round is still running: wait for it (bounded by its timeout)
                logger.info("outer round %d still running at the next global step: waiting for it", before)
                self._apply_background(wait=None)
            if self.peers_in_last_round() > 1:
                self.background.start(self.opt.local_epoch)
            else:
                with self.opt.state_averager.lock_averaged_tensors:
                    self.outer.step()  # alone: no group to find, the blocking step is the same update
        return advanced

    def _apply_background(self, wait: float | None, catch_up: bool = True) -> None:
        snapshot, epoch = self.background.snapshot, self.background.epoch
        result = self.background.finish(wait=wait)
        if result is None:
            return
        with self.opt.state_averager.lock_averaged_tensors:  # the anchor is served (get_current_state)
            self.outer.apply_round(result[0], result[1], snapshot)
        if self.background.last_averaged:
            self.opt.state_averager.landed_round = epoch  # served with our state: we can be a catch-up donor
        elif catch_up and self.catch_up:
            self._catch_up(epoch)

    def _catch_up(self, epoch: int, retry_every: float = 1.0) -> bool:
        """After a round this peer missed (it was started because others were there, and did not average): with the
        momentum not averaged, ours now differs from the swarm's, so load the state of a peer where round ``epoch``
        landed (``RoundCheckedDownload``: a donor still inside the round is refused, and tried again every
        ``retry_every`` s for as long as a round may take, ``averaging_timeout``).

        Our own state-sharing priority drops below the epoch first, so that others that missed the same round try a
        peer that averaged before us. Nobody to download from: we train on with our own state, and the next rounds'
        parameter averaging pulls it back (for the default outer lr 0.7 and momentum 0.9 the difference shrinks
        about 2x per round). What stays different: the donor's own steps since its round began come with its
        parameters, as for any joiner. Returns whether a state was loaded."""
        logger.warning(
            "outer round %d did not average with the swarm: loading the state of a peer where it did "
            "(swarm.momentum_sync: catch_up)",
            epoch,
        )
        self.catch_ups += 1
        averager = self.opt.state_averager
        if not self.opt.client_mode:
            averager.state_sharing_priority = self.opt.local_epoch - 0.5
        patience = self.background.timeout  # a donor still in the round lands or gives it up by then
        deadline = time.monotonic() + patience
        averager.required_round = epoch
        hopeless = 0
        try:
            while True:
                refused, accepted = averager.refused_downloads, averager.accepted_downloads
                for_good = averager.refused_for_good
                self.load_state_from_peers()
                if averager.accepted_downloads > accepted:
                    return True
                if averager.refused_downloads == refused:  # nobody serves a state at all
                    logger.warning("no peer to load round %d from: training on with our own state", epoch)
                    return False
                # donors past the round that did not land it (they missed it too): after a few, stop asking
                hopeless = hopeless + 1 if averager.refused_for_good > for_good else 0
                if hopeless >= CATCH_UP_HOPELESS:
                    logger.warning("the peers asked missed round %d too: training on with our own state", epoch)
                    return False
                if time.monotonic() + retry_every > deadline:
                    logger.warning("no peer served a state with round %d in %.0f s: training on with ours", epoch,
                                   patience)  # fmt: skip
                    return False
                time.sleep(retry_every)
        finally:
            averager.required_round = -1

    def _state_replaced(self) -> None:
        """After any state download (ours or hivemind's catch-up of an out-of-sync peer): the downloaded
        parameters start the next round, and a round computed from the old ones is dropped, with what error feedback
        kept from the old trajectory (``peer.swarm.feedback``)."""
        if self.background is not None:
            self.background.cancel()
            if self.background.feedback is not None:
                self.background.feedback.reset()
        if self.outer is not None:
            with self.opt.state_averager.lock_averaged_tensors:
                self.outer.reset_anchor()

    def finish_round(self, timeout: float | None = None) -> None:
        """Applies a background round still in flight (waits for it at most ``timeout`` s; None: its own timeout),
        so that a peer leaving, or a test comparing peers, sees the round's outcome."""
        if self.background is not None and self.background.pending:
            self._apply_background(wait=timeout, catch_up=False)

    def start_at(self, step: int) -> None:
        """Resume at global ``step`` (state taken from a coordinator checkpoint): epoch and lr schedule follow."""
        self.opt.state_averager.local_epoch = step
        scheduler = self.opt.state_averager.scheduler
        while scheduler is not None and scheduler.last_epoch < step:
            scheduler.step()
        self.opt.tracker.report_local_progress(step, 0)

    def zero_grad(self) -> None:
        if self.outer is not None:
            # diloco: the inner optimizer steps the model's own parameters (no offloaded copies, no gradient
            # averager), so this is all hivemind's zero_grad does, without its walk through the optimizer's param
            # groups: 0.5 ms a step (cProfile, 2.1 M parameters), about 1 % of compute for small models
            for param in self.outer.params:
                param.grad = None
            return
        self.opt.zero_grad(set_to_none=True)

    def load_state_from_peers(self) -> None:
        self.opt.load_state_from_peers()
        if not isinstance(self.opt, GuardedOptimizer):  # a GuardedOptimizer calls _state_replaced itself
            self._state_replaced()

    def peers_in_last_round(self) -> int:
        return self.opt.tracker.global_progress.num_peers

    def round_outcomes(self) -> list[RoundOutcomes]:
        """Outcomes of the all-reduce rounds finished since the last call (empty with robust averaging off)."""
        return self.outcomes.drain() if self.outcomes is not None else []

    def retire(self):
        """Shuts down everything of this optimizer but its state averager, which goes on serving the state it holds
        now to downloaders, and returns that averager (the caller withdraws and shuts it down later).

        Why: at a growth switch the old stage's final state must stay downloadable for a while, so that the
        coordinator can pull it as the last checkpoint before the switch (``peer.swarm.stage_grace``). The steps
        are hivemind 1.1's ``Optimizer.shutdown`` without its ``state_averager.shutdown()``."""
        if self.background is not None:
            self.background.cancel()
        hopt = self.opt
        if hopt.grad_averager is not None:
            withdraw_state_sharing(hopt.grad_averager)
        hopt.tracker.shutdown(hopt.shutdown_timeout)
        hopt.state_averager.step(wait_for_delayed_updates=True)
        for scheduled_round in hopt.scheduled_grads, hopt.scheduled_state:
            if scheduled_round is not None:
                if scheduled_round.stage == AveragingStage.LOOKING_FOR_GROUP:
                    scheduled_round.cancel()
                else:
                    hopt._tag_along_with_zero_weight(scheduled_round)
        if hopt.use_gradient_averaging:
            hopt.grad_averager.shutdown()
        if self.outcomes is not None:
            self.outcomes.close()
        return hopt.state_averager

    def shutdown(self) -> None:
        if self.background is not None:
            self.background.cancel()
        for averager in (self.opt.state_averager, self.opt.grad_averager):
            if averager is not None:
                withdraw_state_sharing(averager)
        self.opt.shutdown()
        if self.outcomes is not None:
            self.outcomes.close()


def withdraw_state_sharing(averager, timeout: float = 5.0) -> None:
    """Overwrites this averager's "I share state" declaration with hivemind's "switched off" value (None) before
    it shuts down.

    Why: hivemind re-declares every ``declare_state_period`` (30 s) and never withdraws on shutdown, so for up to
    30 s after the last peer left, a newcomer still sees state donors, tries each one and waits until its
    ``load_state_timeout`` before it falls back to the coordinator's checkpoint (found by the ``all_leave`` fault
    scenario). Best effort: a DHT that does not answer within ``timeout`` leaves the old record to expire."""
    if averager.client_mode:
        return  # a client-mode averager never declared itself
    try:
        averager.allow_state_sharing = False  # so that the periodic loop does not declare it again
        stored = averager.dht.store(
            f"{averager.prefix}.all_averagers",
            subkey=averager.peer_id.to_bytes(),
            value=None,
            expiration_time=get_dht_time() + averager.declare_state_period,
            return_future=True,
        )
        stored.result(timeout=timeout)
    except Exception as e:  # leaving must never fail on this
        logger.info("could not withdraw the state-sharing declaration (it expires by itself): %s", e)
