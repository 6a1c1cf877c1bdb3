"""The single-process training loop: the step the swarm runs too (``peer.trainer.step``: accumulation, clipping,
the finite guard, the precision fitted to the device), with the warmup+decay schedule, periodic held-out evaluation
and checkpoint/resume.

Read ``train`` top to bottom: it is the recipe. Everything it needs (models on their device, the objective, the
data) is built by the caller (``peer.cli.train``), so tests drive it with tiny models and hand-made batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from peer.config import RunConfig, TrainSpec
from peer.errors import UserError
from peer.modeling import PretrainingModels
from peer.objectives import Objective
from peer.trainer import hardware
from peer.trainer.checkpoint import TrainerState, checkpoint_dirs, restore_checkpoint, save_checkpoint
from peer.trainer.optim import make_optimizer
from peer.trainer.schedule import make_scheduler
from peer.trainer.step import StepSpec, TrainStep, run_step

logger = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one optimizer step reports to a progress display."""

    step: int
    samples: int
    lr: float
    grad_norm: float
    metrics: dict[str, float]
    eval_metrics: dict[str, float] | None = None
    checkpoint: str | None = None


@dataclass
class TrainResult:
    state: TrainerState
    seconds: float
    samples_per_second: float
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: str | None = None
    skipped_steps: int = 0
    checkpoints: list[str] = field(default_factory=list)


def resolve_device(spec: TrainSpec) -> torch.device:
    """``train.device`` on this machine (``auto``: CUDA > MPS > CPU, ``peer.trainer.hardware``)."""
    return hardware.resolve_device(spec.device)


def autocast_dtype(spec: TrainSpec, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.precision`` means on ``device`` (None: fp32)."""
    return hardware.resolve_precision(spec.precision, device).dtype


def step_spec(spec: TrainSpec, device: torch.device) -> StepSpec:
    """The training step ``spec`` asks for on ``device``: its accumulation, clipping and precision."""
    return StepSpec(
        grad_accum=spec.grad_accum,
        clip_norm=spec.clip_norm,
        device_type=device.type,
        precision=hardware.resolve_precision(spec.precision, device),
    )


def compile_models(models: PretrainingModels, mode: str | None = None) -> None:
    """Compiles, in place, the modules the objectives call (parameters and the embedding tie are untouched).
    ``mode="reduce-overhead"`` adds CUDA graphs, which pay for small models whose step is launch-bound; the
    masking and sampling stay outside the compiled regions, so their seeded generator is never captured."""
    models.discriminator.compile(mode=mode)
    if models.generator is not None:
        models.generator.electra.compile(mode=mode)


def train(
    cfg: RunConfig,
    models: PretrainingModels,
    objective: Objective,
    train_batches: Iterator[dict[str, torch.Tensor]],
    heldout_batches: list[dict[str, torch.Tensor]] | None = None,
    *,
    tokenizer=None,
    resume: bool = True,
    max_steps: int | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> TrainResult:
    """Trains until ``cfg.train.total_steps`` (or ``max_steps``, which stops early without changing the schedule),
    resuming from the newest checkpoint in ``cfg.train.out_dir`` when ``resume`` and one exists."""
    spec = cfg.train
    if spec.grad_accum < 1 or spec.batch_size < 1:
        raise UserError("train.batch_size and train.grad_accum must be ≥ 1")
    device = objective.device
    params = models.parameters()
    step = TrainStep(objective, params, step_spec(spec, device))
    optimizer = make_optimizer(params, spec)
    scheduler = make_scheduler(optimizer, spec)
    state = TrainerState()
    result = TrainResult(state, 0.0, 0.0)
    existing = checkpoint_dirs(spec.out_dir) if resume else []
    if existing:
        state = restore_checkpoint(existing[-1], models, optimizer, scheduler, objective)
        result.state, result.resumed_from = state, str(existing[-1])
        logger.info(
            "resumed from %s at step %d; skipping %d consumed batches", existing[-1], state.step, state.batches_consumed
        )
        for _ in range(state.batches_consumed):
            next(train_batches)
    stop = min(spec.total_steps, max_steps) if max_steps is not None else spec.total_steps
    models.train()
    start, start_samples = time.perf_counter(), state.samples

    def counted() -> Iterator[dict[str, torch.Tensor]]:
        for batch in train_batches:
            state.batches_consumed += 1
            yield batch

    batches = counted()
    while state.step < stop:
        outcome = run_step(step, batches, optimizer.step)
        state.samples += outcome.computed.samples
        if not outcome.stepped:
            result.skipped_steps += 1
            logger.warning("step %d: non-finite loss or gradient, update skipped", state.step)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        sums = {"loss": outcome.computed.loss, **outcome.computed.metrics}
        grad_norm = outcome.grad_norm
        report = StepReport(state.step, state.samples, lr, grad_norm, sums)
        result.last_metrics = sums
        if heldout_batches and spec.eval_every > 0 and (state.step % spec.eval_every == 0 or state.step == stop):
            report.eval_metrics = result.eval_metrics = objective.evaluate(heldout_batches)
            logger.info("step %d held-out: %s", state.step, _fmt(report.eval_metrics))
        if spec.checkpoint_every > 0 and (state.step % spec.checkpoint_every == 0 or state.step == stop):
            path = save_checkpoint(spec.out_dir, cfg.run_id, state, models, optimizer, scheduler, objective, tokenizer)
            report.checkpoint = str(path)
            result.checkpoints.append(str(path))
        if on_step is not None:
            on_step(report)
    result.seconds = time.perf_counter() - start
    result.samples_per_second = (state.samples - start_samples) / max(result.seconds, 1e-9)
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
