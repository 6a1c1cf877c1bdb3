"""The peer's training recipe: the training step (``peer.trainer.step``: micro-batches, the finite guard, clipping)
→ hivemind step, guarded, with metrics, periodic held-out evaluation and a status line.

Reads like the single-machine loop on purpose; everything swarm-specific is behind ``SwarmOptimizer.step``. The three
guards that keep one bad peer from poisoning the swarm: a non-finite loss or gradient is never reported to hivemind
(the step is skipped), the gradients it is given are clipped at ``train.clip_norm``, and non-finite parameters after
a global step are replaced by the last good copy.

On rank 0 of a multi-GPU peer (``LoopParts.group``) the same loop also leads the other ranks: one collective after
each backward pass, one decision after each step, and the parameters whenever they may have changed
(``peer.swarm.ddp`` has the protocol and the followers' side).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import hivemind
import torch
from tqdm import tqdm

from peer.errors import UserError
from peer.logs import progress_on
from peer.memory import PeriodicRelease
from peer.run.records import MAX_METRIC_NAME_CHARS, MAX_RECORD_METRICS, LocalMetrics
from peer.swarm.ddp import Decision, PeerGroup, params_digest
from peer.swarm.good_state import GoodState, params_are_finite
from peer.swarm.metrics import MetricsPublisher, RecordSigning, fetch_metrics, publish_metrics
from peer.swarm.shutdown import StopSignal
from peer.swarm.stage_switch import StageSwitcher
from peer.swarm.swarm_optimizer import SwarmOptimizer
from peer.trainer.step import StepObjective, StepSpec, TrainStep, eval_due, grads_are_finite

logger = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    max_global_steps: int | None = None  # stop once the swarm's step reaches this (None: until stopped)
    max_seconds: float | None = None
    metrics_every: float = 5.0  # seconds between LocalMetrics refreshes
    metrics_expiration: float = 600.0
    peer_name: str = ""
    fingerprint: str = ""
    show_status: bool = True  # a live status line, drawn only when stdout and stderr are terminals (progress_on)
    log_every: int = 0  # without the status line: a progress log line every this many local steps (0: none)
    wait_for_peers: int = 1  # train only once this many peers of the run (this one included) publish records
    save_params: str | None = None  # write the parameters here on leaving (safetensors), to compare peers or ranks
    # the coordinator's reason if it banned this peer, else None (``BanGate.coordinator_ban``); asked at the metrics
    # cadence. Why: a banned peer cannot average; left running it trained alone and, falling behind, asked every
    # donor for the state ~24 times a second, each refused (the soak bench)
    own_ban: Callable[[], str | None] | None = None
    # seconds between returning the allocator's free pages to the OS (peer.memory.PeriodicRelease)
    release_memory_every: float = 60.0


@dataclass
class LoopResult:
    global_step: int
    local_steps: int
    samples: int
    skipped_batches: int
    restored: int
    compute_seconds: float  # batches, forward, backward and the gradients' finite check
    wall_seconds: float
    last_loss: float
    params_digest: str = ""  # sha256 prefix of the parameters when the loop ended (equal = bit-identical)
    step_seconds: float = 0.0  # inside the swarm optimizer's step and zero_grad (local updates, rounds, catch-ups)
    metrics_seconds: float = 0.0  # publishing LocalMetrics (sent without waiting for the DHT: ~0)
    metrics_sent: int = 0


@dataclass
class LoopParts:
    """What the loop trains: the parameters, the objective of a batch (an ``ObjectiveOutput``, or a bare loss), the
    micro-batches, and how a step is computed (``peer.trainer.step``). Samples are counted from the micro-batches
    themselves (a multi-GPU peer reports its rank's samples x world_size)."""

    params: list[torch.nn.Parameter]
    objective: StepObjective
    batches: Iterator[dict]
    group: PeerGroup | None = None  # set on rank 0 of a torchrun group (peer.swarm.ddp)
    step: StepSpec = field(default_factory=StepSpec)  # accumulation, clipping, precision
    # held-out metrics of the current parameters (the objective's ``evaluate`` over the held-out batches), run every
    # ``eval_every`` local steps and published with the next record as ``eval_<name>``; None: no evaluation
    evaluate: Callable[[], dict[str, float]] | None = None
    eval_every: int = 0
    # a run with a growth schedule: where this peer is in it and the switch at each stage's global step
    # (``peer.swarm.stage_switch``); None without a schedule, and the loop is then exactly the one-stage loop
    stages: StageSwitcher | None = None


def train_loop(
    dht: hivemind.DHT,
    run_id: str,
    signing: RecordSigning,
    opt: SwarmOptimizer,
    parts: LoopParts,
    stop: StopSignal,
    options: LoopOptions,
) -> LoopResult:
    """The peer's loop until stopped or a limit is reached. With ``parts.group`` (a multi-GPU peer, run on rank 0)
    the gradients are the group's mean, the samples are the group's, and every rank follows this loop's decisions
    (see ``peer.swarm.ddp``); the collectives below are matched one for one by ``follower.follow_loop``."""
    params, group = parts.params, parts.group
    world = group.world_size if group is not None else 1
    good = GoodState(params)
    start = last_metrics = time.monotonic()
    compute = step_total = 0.0
    publisher = MetricsPublisher(dht, run_id, signing, options.metrics_expiration)
    releaser = PeriodicRelease(options.release_memory_every)
    local_steps = samples = samples_since_step = skipped = restored = 0
    loss_value = float("nan")
    step_metrics: dict[str, float] = {}  # the last step's objective metrics and gradient norms
    eval_metrics: dict[str, float] = {}  # the last held-out evaluation's
    ema_rate = 0.0
    train_step = TrainStep(parts.objective, params, parts.step)
    published_samples = 0  # samples_total of the last record handed to the publisher
    changes_every_step = opt.changes_every_step  # then followers must get the parameters after every step
    if options.wait_for_peers > 1:
        wait_for_peers(dht, run_id, signing, opt, options, stop, parts.stages.index if parts.stages else 0)
    if group is not None:
        group.sync_params(params)  # followers start from the state this peer joined the swarm with

    def current_record() -> LocalMetrics:
        """This peer's progress record as of now (periodic, and the last one when the loop ends)."""
        metrics = {**step_metrics, **eval_metrics}
        stage = parts.stages.index if parts.stages is not None else 0
        return local_metrics(
            dht, opt, options, ema_rate, samples_since_step, samples, loss_value, local_steps, metrics, stage
        )

    show_bar = options.show_status and progress_on()
    bar = tqdm(desc="swarm", unit="batch", disable=not show_bar, dynamic_ncols=True)
    try:
        while True:
            stop.reassert()  # hivemind may have set SIGINT to ignored when it started an averager
            if stop.is_set() or limit_reached(opt, options, start):
                if group is not None:
                    group.dismiss(params, opt.global_step)
                break
            t0 = time.perf_counter()
            computed = train_step.backward(parts.batches)
            healthy = train_step.unscale(computed)
            step_loss = computed.loss if healthy else 0.0
            compute += time.perf_counter() - t0
            others_stop = False
            if group is not None:
                vote = group.reduce_step(params, step_loss, healthy, stop=False)
                if healthy and not vote.healthy:
                    logger.warning("another rank of this peer had a non-finite loss or gradients: skipping the step")
                healthy, step_loss, others_stop = vote.healthy, vote.mean_loss, vote.stop
                healthy = healthy and grads_are_finite(params)
            if not healthy:
                opt.zero_grad()
                train_step.update_scale()
                skipped += 1
                if group is not None:
                    group.decide(Decision(True, others_stop, False, opt.global_step, step_loss))
                if others_stop:
                    break
                continue
            norm, clipped_norm = train_step.clip(measure_again=group is not None)  # a multi-GPU peer: the mean
            step_samples = computed.samples * world
            t_step = time.perf_counter()
            advanced = opt.step(step_samples)
            opt.zero_grad()
            train_step.update_scale()
            step_seconds = time.perf_counter() - t_step
            step_total += step_seconds
            local_steps += 1
            samples += step_samples
            samples_since_step = 0 if advanced else samples_since_step + step_samples
            loss_value = step_loss
            step_metrics = {**computed.metrics, "grad_norm": clipped_norm, "grad_norm_unclipped": norm}
            rate = step_samples / max(1e-9, time.perf_counter() - t0)
            ema_rate = rate if ema_rate == 0 else 0.9 * ema_rate + 0.1 * rate
            was_restored = False
            if advanced:
                if params_are_finite(params):
                    good.save(params)
                else:
                    logger.error(
                        "non-finite parameters after global step %d: restoring the last good state", opt.global_step
                    )
                    healed = good.restore_into(opt, params)
                    if healed:
                        logger.warning("reset %d optimizer-state entries that were non-finite or negative", healed)
                    restored += 1
                    was_restored = True
            while parts.stages is not None and parts.stages.due(opt.global_step):
                # the swarm reached the next stage's step (by this step, or by a state download): grow, and go on
                # at the same step with the new stage's optimizer (every peer does so at the same step)
                opt = parts.stages.switch(opt, stop)
                params = parts.stages.params()
                scaler = train_step.scaler
                train_step = TrainStep(parts.objective, params, parts.step)
                train_step.scaler = scaler
                good = GoodState(params)
                changes_every_step = opt.changes_every_step
                samples_since_step = 0
            if group is not None:
                changed = advanced or was_restored or changes_every_step
                group.decide(Decision(False, others_stop, changed, opt.global_step, loss_value))
                if changed:
                    group.sync_params(params)
            logger.debug(
                "local step %d took %.3fs (optimizer %.3fs)", local_steps, time.perf_counter() - t0, step_seconds
            )
            if parts.evaluate is not None and eval_due(local_steps, parts.eval_every):
                eval_metrics = {f"eval_{k}": v for k, v in parts.evaluate().items()}
                logger.info("local step %d held-out: %s", local_steps, _fmt(eval_metrics))
            releaser.maybe()
            if show_bar:
                bar.update(1)
                bar.set_postfix_str(status_text(opt, ema_rate, loss_value), refresh=False)
            elif options.log_every > 0 and local_steps % options.log_every == 0:
                logger.info("local step %d: %s", local_steps, status_text(opt, ema_rate, loss_value))
            publisher.poll()
            if time.monotonic() - last_metrics >= options.metrics_every or advanced:
                last_metrics = time.monotonic()
                publisher.publish(current_record())
                published_samples = samples
                ban = options.own_ban() if options.own_ban is not None else None
                if ban:
                    raise UserError(f"this peer is banned from run {run_id!r} ({ban}): it can no longer average")
            if others_stop:
                logger.info("another rank of this peer was asked to stop: leaving the swarm")
                break
    finally:
        bar.close()
    if samples > published_samples:  # trained since the last record: the coordinator credits only what it reads
        publisher.publish(current_record())
    if not publisher.flush(timeout=5.0):  # the coordinator sees this peer's last samples
        logger.info("the last metrics record was still being stored when the loop ended")
    if options.save_params:
        save_params(params, options.save_params)
    return LoopResult(
        global_step=opt.global_step,
        local_steps=local_steps,
        samples=samples,
        skipped_batches=skipped,
        restored=restored,
        compute_seconds=compute,
        wall_seconds=time.monotonic() - start,
        last_loss=loss_value,
        params_digest=params_digest(params),
        step_seconds=step_total,
        metrics_seconds=publisher.seconds,
        metrics_sent=publisher.sent,
    )


def status_text(opt: SwarmOptimizer, samples_per_second: float, loss: float) -> str:
    """What the status line shows, and the progress log lines say when there is no status line: the swarm's global
    step, this peer's rate and last loss, and how many peers averaged in the last round."""
    return (
        f"global step {opt.global_step} | {samples_per_second:.1f} samples/s | loss {loss:.4f} | "
        f"peers {opt.peers_in_last_round()}"
    )


def local_metrics(
    dht: hivemind.DHT,
    opt: SwarmOptimizer,
    options: LoopOptions,
    rate: float,
    samples_since_step: int,
    samples: int,
    loss: float,
    local_steps: int,
    metrics: dict[str, float] | None = None,
    stage: int = 0,
) -> LocalMetrics:
    """This peer's metrics record as of now; ``metrics`` (the objective's, the gradient norms, the last held-out
    evaluation's) keep their finite values only, at most ``MAX_RECORD_METRICS`` of them; ``stage``: the growth
    stage it trains (``peer.swarm.stage_switch``)."""
    return LocalMetrics(
        step=opt.global_step,
        samples_per_second=float(min(rate, 1e7)),
        samples_accumulated=samples_since_step,
        samples_total=samples,
        loss=loss,
        mini_steps=local_steps,
        time=time.time(),
        peer_name=options.peer_name,
        fingerprint=options.fingerprint,
        peer_id=str(dht.peer_id),
        metrics=record_metrics(metrics or {}),
        stage=stage,
    )


def record_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The finite entries of ``metrics`` that fit a record (``peer.run.records``' bounds), in their order. Why
    finite only: an AUC over a batch without a replaced token is NaN, which says nothing a dashboard can plot."""
    kept = {k: float(v) for k, v in metrics.items() if len(k) <= MAX_METRIC_NAME_CHARS and math.isfinite(v)}
    return dict(list(kept.items())[:MAX_RECORD_METRICS])


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def limit_reached(opt: SwarmOptimizer, options: LoopOptions, start: float) -> bool:
    if options.max_global_steps is not None and opt.global_step >= options.max_global_steps:
        return True
    return options.max_seconds is not None and time.monotonic() - start > options.max_seconds


def wait_for_peers(
    dht: hivemind.DHT,
    run_id: str,
    signing: RecordSigning,
    opt: SwarmOptimizer,
    options: LoopOptions,
    stop: StopSignal,
    stage: int = 0,
) -> None:
    """Publishes this peer's record (no loss yet: NaN, which the coordinator leaves out of its mean) and its
    progress-tracker record until ``options.wait_for_peers`` peers of the run are present in both, or a stop/limit.
    Why: a peer that starts alone takes global steps alone until the others arrive; scheduled starts, benchmarks and
    tests want every peer in every round from the first one. Why both: the metrics records are ours, but hivemind's
    tracker decides when a global step is due, and it saw a peer only once that peer had samples; peers then took
    solo steps at the start and ended an epoch apart. ``stage``: the growth stage the peer trains (its record's)."""
    start = time.monotonic()
    tracker = opt.opt.tracker
    logger.info("waiting for %d peers of run %s before training", options.wait_for_peers, run_id)
    while not stop.is_set() and not limit_reached(opt, options, start):
        stop.reassert()
        record = LocalMetrics(
            step=opt.global_step,
            samples_per_second=0.0,
            samples_accumulated=0,
            samples_total=0,
            loss=float("nan"),
            mini_steps=0,
            time=time.time(),
            peer_name=options.peer_name,
            fingerprint=options.fingerprint,
            peer_id=str(dht.peer_id),
            stage=stage,  # the coordinator rejects a record whose stage is not the one of its step
        )
        publish_metrics(dht, run_id, signing, record, options.metrics_expiration)
        tracker.announce()
        present = len(fetch_metrics(dht, run_id))
        if present >= options.wait_for_peers:
            # the records say they are here; hivemind's tracker, which decides when a global step is due, must see
            # them too, or each peer counts only its own samples until its next read (ThrottledProgressTracker.announce)
            tracked = tracker.refresh_now(timeout=5.0)
            if tracked >= options.wait_for_peers:
                logger.info("%d peers present, %d in the progress tracker: training", present, tracked)
                return
        stop.wait(1.0)


def save_params(params: list[torch.Tensor], path: str) -> None:
    """The parameters in the loop's order (tensor ``i`` = ``params[i]``): what two peers, or two ranks, must agree
    on after a round; a safetensors file any process can compare without building the model."""
    from safetensors.torch import save_file

    save_file({str(i): p.detach().to("cpu").contiguous() for i, p in enumerate(params)}, path)
