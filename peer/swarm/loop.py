"""The peer's training recipe: batch → loss → backward → hivemind step, guarded, with metrics and a status line.

Reads like the single-machine loop on purpose; everything swarm-specific is behind ``SwarmOptimizer.step``. The two
guards that keep one bad peer from poisoning the swarm: a non-finite loss or gradient is never reported to hivemind
(the batch is skipped), and non-finite parameters after a global step are replaced by the last good copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import hivemind
import torch
from tqdm import tqdm

from peer.records import LocalMetrics
from peer.swarm.averaging import SwarmOptimizer
from peer.swarm.metrics import RecordSigning, publish_metrics
from peer.swarm.shutdown import StopSignal

logger = logging.getLogger(__name__)


@dataclass
class LoopOptions:
    max_global_steps: int | None = None  # stop once the swarm's step reaches this (None: until stopped)
    max_seconds: float | None = None
    metrics_every: float = 5.0  # seconds between LocalMetrics refreshes
    metrics_expiration: float = 600.0
    peer_name: str = ""
    fingerprint: str = ""
    show_status: bool = True


@dataclass
class LoopResult:
    global_step: int
    local_steps: int
    samples: int
    skipped_batches: int
    restored: int
    compute_seconds: float
    wall_seconds: float
    last_loss: float
    losses: list[float] = field(default_factory=list)


@dataclass
class LoopParts:
    """What the loop trains: the parameters, a loss function of a batch, the batches, samples per batch."""

    params: list[torch.nn.Parameter]
    loss_fn: Callable[[dict], torch.Tensor]
    batches: Iterator[dict]
    batch_size: int


def params_are_finite(params: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params)


def grads_are_finite(params: list[torch.Tensor]) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


class GoodState:
    """A CPU copy of the parameters after the last healthy global step (what hivemind's albert example keeps)."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.copies = [p.detach().to("cpu", copy=True) for p in params]

    @torch.no_grad()
    def restore_into(self, opt: SwarmOptimizer, params: list[torch.Tensor]) -> None:
        targets = [params]
        main = list(opt.opt.state_averager.main_parameters)
        if main and main[0] is not params[0]:
            targets.append(main)  # offloaded master copies live in the state averager
        for group in targets:
            for target, copy in zip(group, self.copies, strict=True):
                target.copy_(copy.to(target.device))


def train_loop(
    dht: hivemind.DHT,
    run_id: str,
    signing: RecordSigning,
    opt: SwarmOptimizer,
    parts: LoopParts,
    stop: StopSignal,
    options: LoopOptions,
) -> LoopResult:
    params = parts.params
    good = GoodState(params)
    start = last_metrics = time.monotonic()
    compute = 0.0
    local_steps = samples = samples_since_step = skipped = restored = 0
    loss_value = float("nan")
    losses: list[float] = []
    ema_rate = 0.0
    bar = tqdm(desc="swarm", unit="batch", disable=not options.show_status, dynamic_ncols=True)
    try:
        while not stop.is_set():
            stop.reassert()  # hivemind may have set SIGINT to ignored when it started an averager
            if options.max_global_steps is not None and opt.global_step >= options.max_global_steps:
                break
            if options.max_seconds is not None and time.monotonic() - start > options.max_seconds:
                break
            t0 = time.perf_counter()
            batch = next(parts.batches)
            loss = parts.loss_fn(batch)
            if not torch.isfinite(loss):
                logger.warning("non-finite loss %s: skipping this batch, nothing sent to the swarm", loss.item())
                opt.zero_grad()
                skipped += 1
                continue
            loss.backward()
            if not grads_are_finite(params):
                logger.warning("non-finite gradients: skipping this batch, nothing sent to the swarm")
                opt.zero_grad()
                skipped += 1
                continue
            compute += time.perf_counter() - t0
            t_step = time.perf_counter()
            advanced = opt.step(parts.batch_size)
            opt.zero_grad()
            step_seconds = time.perf_counter() - t_step
            local_steps += 1
            samples += parts.batch_size
            samples_since_step = 0 if advanced else samples_since_step + parts.batch_size
            loss_value = float(loss.item())
            losses.append(loss_value)
            rate = parts.batch_size / max(1e-9, time.perf_counter() - t0)
            ema_rate = rate if ema_rate == 0 else 0.9 * ema_rate + 0.1 * rate
            if advanced:
                if params_are_finite(params):
                    good = GoodState(params)
                else:
                    logger.error(
                        "non-finite parameters after global step %d: restoring the last good state", opt.global_step
                    )
                    good.restore_into(opt, params)
                    restored += 1
            logger.debug(
                "local step %d took %.3fs (optimizer %.3fs)", local_steps, time.perf_counter() - t0, step_seconds
            )
            bar.update(1)
            bar.set_postfix_str(
                f"step {opt.global_step} | {ema_rate:.1f} samples/s | loss {loss_value:.4f} | "
                f"peers {opt.peers_in_last_round()}",
                refresh=False,
            )
            if time.monotonic() - last_metrics >= options.metrics_every or advanced:
                last_metrics = time.monotonic()
                record = LocalMetrics(
                    step=opt.global_step,
                    samples_per_second=float(min(ema_rate, 1e7)),
                    samples_accumulated=samples_since_step,
                    samples_total=samples,
                    loss=loss_value,
                    mini_steps=local_steps,
                    time=time.time(),
                    peer_name=options.peer_name,
                    fingerprint=options.fingerprint,
                    peer_id=str(dht.peer_id),
                )
                publish_metrics(dht, run_id, signing, record, options.metrics_expiration)
    finally:
        bar.close()
    return LoopResult(
        global_step=opt.global_step,
        local_steps=local_steps,
        samples=samples,
        skipped_batches=skipped,
        restored=restored,
        compute_seconds=compute,
        wall_seconds=time.monotonic() - start,
        last_loss=loss_value,
        losses=losses,
    )
