"""The hivemind.Optimizer of a peer, in one of the averaging modes of ``SwarmSpec.averaging``, each an
``AveragingMode`` object (``MODES``):

"sync": hivemind's default. Peers accumulate gradients until the swarm together reaches ``target_batch_size``
samples, all-reduce them (``compression`` applied to what is sent) and all take the same optimizer step, so N peers
of any speed follow the trajectory of one big-batch job. ``delay_optimizer_step`` overlaps the step with compute.

"diloco": DiLoCo over hivemind. Each peer takes local inner-optimizer steps on every batch (hivemind's
``use_local_updates``); an outer round starts when the swarm has processed ``inner_steps * target_batch_size``
samples. In the round hivemind's state averager all-reduces the parameters (compressed), and we then apply the outer
SGD-Nesterov step to the pseudo-gradient ``anchor - averaged``. Why this instead of a separate averager: averaging is
linear, so averaging parameters and subtracting from the common anchor is exactly the averaged pseudo-gradient, and
we keep hivemind's matchmaking, progress tracking and state download for free. The outer momentum buffers are
``extra_tensors`` of the state averager, so late joiners download them with the parameters, and they are averaged
each round (``momentum_sync: average``), in 8 bits by default (``momentum_compression``:
``peer.swarm.codecs.MinMax8BitQuantization``; the parameters use ``compression``, fp16): 3 bytes per parameter per
round. With the rounds in the background the default is ``momentum_sync: catch_up``: the momentum is not sent (2
bytes per parameter per round), because every peer of a round updates it from the same averaged parameters and
the same anchor, so it stays equal by itself (up to compression error); what would make it differ is a round that
one peer missed (a timeout, a dropped link) while the others averaged, and such a peer downloads the state of one
that took part (``SwarmOptimizer._catch_up``) before it trains on. (The one difference from sending
pseudo-gradients: compression error applies to parameters; fp16 keeps it below 1e-3 relative.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import hivemind
import torch
from hivemind.compression import CompressionBase, NoCompression, RoleAdaptiveCompression
from hivemind.utils import get_dht_time

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.bans import BanBook
from peer.swarm.codecs import make_compression
from peer.swarm.gate import OpenGate, PeerGate
from peer.swarm.overlap import BackgroundRound
from peer.swarm.overrides.averagers import AveragerGuard, AveragerKinds
from peer.swarm.overrides.optimizer import GuardedOptimizer
from peer.swarm.robust import ClipSettings
from peer.swarm.round_evidence import OutcomeChannel, RoundOutcomes

logger = logging.getLogger(__name__)

NEVER = 2**62  # an ``average_state_every`` no epoch reaches
CATCH_UP_HOPELESS = 3  # catch-up: donors in a row that are past the missed round without it before we give up
OptimizerFactory = Callable[[Sequence], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]


def make_state_compression(spec: SwarmSpec) -> CompressionBase:
    """The codec of a state-averaging round: ``spec.compression`` for the parameters and
    ``spec.momentum_compression`` for the extra tensors (DiLoCo's outer momentum, hivemind's role UNSPECIFIED).

    Why two: the parameters are averaged as values, where 8 bits would put quantisation error on the weights
    themselves; the momentum is an average of pseudo-gradients, an update, where it does not."""
    return RoleAdaptiveCompression(
        parameter=make_compression(spec.compression), default=make_compression(spec.momentum_compression)
    )


def optimizer_statistics(optimizer_factory: OptimizerFactory) -> tuple[str, ...]:
    """Names of the optimizer's per-parameter statistics (state tensors shaped like their parameter: Adam's
    ``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``), read off a throwaway one-tensor optimizer after one step
    on a zero gradient, as hivemind initialises the real one. Why not a fixed list: hivemind fails on a name the
    optimizer does not keep, and the factory is the run's (or a test's) choice."""
    probe = torch.nn.Parameter(torch.zeros(2, 3))
    optimizer = optimizer_factory([probe])
    probe.grad = torch.zeros_like(probe)
    optimizer.step()
    state = optimizer.state[probe]
    return tuple(sorted(k for k, v in state.items() if torch.is_tensor(v) and v.shape == probe.shape))


@dataclass
class OuterNesterov:
    """DiLoCo's outer optimizer: SGD with Nesterov momentum on the averaged pseudo-gradient ``anchor - params``.

    ``anchor`` holds the parameters at the start of the round; ``momentum`` is shared through the state averager."""

    params: list[torch.Tensor]
    lr: float
    momentum_factor: float
    anchor: list[torch.Tensor] = field(init=False)
    momentum: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.anchor = [p.detach().clone() for p in self.params]
        self.momentum = [torch.zeros_like(p, device="cpu") for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for param, anchor, buf in zip(self.params, self.anchor, self.momentum, strict=True):
            delta = anchor - param.detach()
            buf.mul_(self.momentum_factor).add_(delta.to(buf.device))
            update = delta + self.momentum_factor * buf.to(delta.device)
            param.copy_(anchor - self.lr * update)
            anchor.copy_(param)

    @torch.no_grad()
    def apply_round(
        self,
        averaged: Sequence[torch.Tensor],
        averaged_momentum: Sequence[torch.Tensor] | None,
        snapshot: Sequence[torch.Tensor],
    ) -> None:
        """The outer step of a round that ran in the background (``peer.swarm.overlap``): the same update as
        ``step`` computed from the round's ``averaged`` snapshot, with the local progress made since the ``snapshot``
        kept on top of the new anchor. ``averaged_momentum`` (None: not averaged) replaces the momentum first."""
        momenta = averaged_momentum if averaged_momentum is not None else [None] * len(self.params)
        for param, anchor, buf, avg, avg_buf, snap in zip(
            self.params, self.anchor, self.momentum, averaged, momenta, snapshot, strict=True
        ):
            if avg_buf is not None:
                buf.copy_(avg_buf)
            delta = anchor - avg.to(anchor.device)
            buf.mul_(self.momentum_factor).add_(delta.to(buf.device))
            target = anchor - self.lr * (delta + self.momentum_factor * buf.to(delta.device))
            param.add_(target - snap)
            anchor.copy_(target)

    @torch.no_grad()
    def reset_anchor(self) -> None:
        """After a state download the downloaded parameters are the new round's start."""
        for param, anchor in zip(self.params, self.anchor, strict=True):
            anchor.copy_(param)


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
        parameters start the next round, and a round computed from the old ones is dropped."""
        if self.background is not None:
            self.background.cancel()
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


def momentum_sync(spec: SwarmSpec) -> str:
    """``SwarmSpec.momentum_sync`` resolved: None means "catch_up" with background rounds and "average" without."""
    if spec.momentum_sync is None:
        return "catch_up" if spec.overlap_rounds else "average"
    if spec.momentum_sync == "catch_up" and not spec.overlap_rounds:
        raise UserError(
            "swarm.momentum_sync: catch_up needs swarm.overlap_rounds: true (a blocking round does not say whether it "
            "averaged); use momentum_sync: average"
        )
    return spec.momentum_sync


def robust_enabled(spec: SwarmSpec, open_run: bool) -> bool:
    """``SwarmSpec.robust_averaging``, where None means on for an open run (anyone may join) and off for a private
    run (every peer holds an allowlisted token), unless set."""
    return open_run if spec.robust_averaging is None else spec.robust_averaging


class AveragingMode(Protocol):
    """What differs between the averaging modes of ``SwarmSpec.averaging``: one object per mode in ``MODES``, found
    by ``averaging_mode``. The rest of the peer asks it instead of testing the mode's name: how the optimizer is built
    (``build``), how many tensors the state carries beside each parameter (``extras_per_parameter``: the extra
    tensors of hivemind's state download, a checkpoint's ``outer_momentum/``), and what peers of one run must agree
    on (``fingerprint``). A new mode is a class here, its entry in ``MODES``, and its name (and settings) in
    ``peer.config.SwarmSpec``."""

    name: str
    extras_per_parameter: int

    def build(self, spec: SwarmSpec, shared: dict, outcomes: OutcomeChannel | None) -> SwarmOptimizer:
        """The peer's optimizer. ``shared`` holds the ``GuardedOptimizer`` arguments every mode passes (DHT, run_id,
        ``params`` (maybe param groups), the ``optimizer`` and ``scheduler`` factories, timeouts, the averagers'
        guard, ...); ``outcomes`` is where the robust reducer's verdicts arrive (None: robust averaging off)."""
        ...

    def fingerprint(self, spec: SwarmSpec) -> dict:
        """This mode's part of ``peer.swarm.metrics.swarm_fingerprint``: the settings whose mismatch makes peers send
        tensors of the wrong shape or meaning. Changing it for an existing mode splits running swarms."""
        return {"averaging": self.name, "target_batch_size": spec.target_batch_size}


class SyncMode(AveragingMode):
    """"sync" (see the module docstring): gradients averaged towards ``target_batch_size``, one optimizer step for
    all; the state carries parameters and optimizer state only."""

    name = "sync"
    extras_per_parameter = 0

    def build(self, spec: SwarmSpec, shared: dict, outcomes: OutcomeChannel | None) -> SwarmOptimizer:
        compression = make_compression(spec.compression)
        statistics = optimizer_statistics(shared["optimizer"]) if spec.sync_optimizer_state else ()
        opt = GuardedOptimizer(
            target_batch_size=spec.target_batch_size,
            grad_compression=compression,
            # the statistics travel uncompressed: Adam's second moment (1e-10 and below) underflows fp16 to 0
            state_averaging_compression=RoleAdaptiveCompression(optimizer=NoCompression(), default=compression),
            average_opt_statistics=statistics,
            delay_optimizer_step=spec.delay_optimizer_step,
            offload_optimizer=True,
            **shared,
        )
        return SwarmOptimizer(opt, None, outcomes)


class DiLoCoMode(AveragingMode):
    """"diloco" (see the module docstring): local inner steps, parameters averaged every ``inner_steps *
    target_batch_size`` samples and the outer Nesterov step on the result, in the background with
    ``overlap_rounds``; the state carries one outer-momentum buffer per parameter."""

    name = "diloco"
    extras_per_parameter = 1

    def build(self, spec: SwarmSpec, shared: dict, outcomes: OutcomeChannel | None) -> SwarmOptimizer:
        params = shared["params"]
        flat = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
        outer = OuterNesterov(flat, lr=spec.outer_lr, momentum_factor=spec.outer_momentum)
        average_momentum = momentum_sync(spec) == "average"
        opt = GuardedOptimizer(
            target_batch_size=spec.target_batch_size * spec.inner_steps,
            use_local_updates=True,
            delay_state_averaging=False,  # the outer step needs the averaged parameters when step() returns
            # overlapped rounds are started by SwarmOptimizer (peer.swarm.overlap), so hivemind never averages itself
            average_state_every=NEVER if spec.overlap_rounds else 1,
            state_averaging_compression=make_state_compression(spec),
            extra_tensors=outer.momentum,
            # "average": in every round (with fp16 parameters and 8-bit momentum 1.5x the bytes of the parameters
            # alone). Not averaged without a catch-up for missed rounds, two peers ended 0.18-0.49 apart after the
            # last outer step of tests/peer/swarm/test_swarm_peers.py (diloco); "catch_up" is that rule
            # (SwarmOptimizer)
            average_extras=average_momentum,
            **shared,
        )
        background = None
        if spec.overlap_rounds:
            # joiners and catch-ups get the last round's outcome, not our own steps since. Only here: with the round
            # inside step() (hivemind's own out-of-sync downloads), serving the anchor made the two peers of the
            # blocking diloco test in tests/peer/swarm/test_swarm_peers.py end 0.07-0.19 apart
            opt.state_averager.served_parameters = outer.anchor
            background = BackgroundRound(
                opt.state_averager,
                flat,
                outer.momentum,
                average_momentum=average_momentum,
                timeout=spec.averaging_timeout,
            )
        return SwarmOptimizer(opt, outer, outcomes, background=background, catch_up=not average_momentum)


MODES: dict[str, AveragingMode] = {mode.name: mode for mode in (SyncMode(), DiLoCoMode())}
"""Every averaging mode by its ``SwarmSpec.averaging`` name (``peer.config`` lists the same names, so that a
config file with another one fails when it is read)."""


def averaging_mode(spec: SwarmSpec) -> AveragingMode:
    """The mode ``spec.averaging`` names; UserError in one line for a name no mode has."""
    mode = MODES.get(spec.averaging)
    if mode is None:
        known = ", ".join(repr(name) for name in MODES)
        raise UserError(f"swarm.averaging: {spec.averaging!r} is not an averaging mode (known: {known})")
    return mode


def build_swarm_optimizer(
    dht: hivemind.DHT,
    run_id: str,
    spec: SwarmSpec,
    params: Sequence[torch.nn.Parameter] | Sequence[dict],
    optimizer_factory: OptimizerFactory,
    scheduler_factory: SchedulerFactory | None,
    batch_size: int,
    verbose: bool = False,
    gate: PeerGate | None = None,
    open_run: bool = True,
    client_mode: bool = False,
    kinds: AveragerKinds | None = None,
) -> SwarmOptimizer:
    """The peer's optimizer for ``spec.averaging`` (its ``AveragingMode`` builds it from the arguments every mode
    shares); ``batch_size`` = samples per local step (all DDP ranks).

    ``params`` may be param groups (e.g. decay / no-decay): hivemind hands the optimizer factory its offloaded
    copies as groups, so the grouping must be decided here, not inside the factory.

    ``gate`` decides who may average with this peer (None: everyone); ``open_run`` resolves the robust switch (see
    ``robust_enabled``); ``client_mode`` is the peer's own (``PeerSettings.client_mode``: its averagers accept no
    incoming connections); ``kinds`` substitutes averager classes (the fault-injection bench's attackers)."""
    mode = averaging_mode(spec)
    params = list(params)
    if not spec.progress_report_interval >= 0:
        raise UserError(f"need swarm.progress_report_interval >= 0, got {spec.progress_report_interval}")
    if not spec.progress_refresh_max >= 0.5:  # hivemind's min_refresh_period
        raise UserError(f"need swarm.progress_refresh_max >= 0.5 (seconds), got {spec.progress_refresh_max}")
    if not spec.clip_factor > 0 or spec.ban_after < 1:
        got = f"{spec.clip_factor}, {spec.ban_after}"
        raise UserError(f"need swarm.clip_factor > 0 and swarm.ban_after >= 1, got {got}")
    if not spec.local_ban_seconds > 0:
        raise UserError(f"need swarm.local_ban_seconds > 0, got {spec.local_ban_seconds}")
    robust = robust_enabled(spec, open_run)
    outcomes = OutcomeChannel() if robust else None
    guard = AveragerGuard(
        gate=gate or OpenGate(), robust=robust, clip=ClipSettings(clip_factor=spec.clip_factor), channel=outcomes
    )
    shared = dict(
        guard=guard,
        kinds=kinds or AveragerKinds(),
        dht=dht,
        run_id=run_id,
        params=params,
        optimizer=optimizer_factory,
        scheduler=scheduler_factory,
        batch_size_per_step=batch_size,
        matchmaking_time=spec.matchmaking_time,
        averaging_timeout=spec.averaging_timeout,
        load_state_timeout=spec.load_state_timeout,
        client_mode=client_mode,
        verbose=verbose,
        progress_report_interval=spec.progress_report_interval,
        tracker_opts=dict(
            max_refresh_period=spec.progress_refresh_max, default_refresh_period=min(3.0, spec.progress_refresh_max)
        ),
    )
    return mode.build(spec, shared, outcomes)
