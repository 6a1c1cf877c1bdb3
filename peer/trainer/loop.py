"""The single-process training loop: the step the swarm runs too (``peer.trainer.step``: accumulation, clipping,
the finite guard, the precision fitted to the device), with the warmup+decay schedule, periodic held-out evaluation,
checkpoint/resume, and the switch to the next growth stage at its step (``peer.trainer.stages``).

Read ``train`` top to bottom: it is the recipe. Everything it needs (models on their device, the objective, the
data) is built by the caller (``peer.cli.train``), so tests drive it with tiny models and hand-made batches.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from peer.config import ModelSpec, RunConfig, TrainSpec, model_stages
from peer.errors import UserError
from peer.modeling import PretrainingModels
from peer.objectives import Objective
from peer.trainer import hardware
from peer.trainer.checkpoint import TrainerState, checkpoint_dirs, restore_checkpoint, save_checkpoint
from peer.trainer.optim import make_optimizer
from peer.trainer.schedule import make_scheduler
from peer.trainer.stages import GrowStage, Optimization, current_stage, switch_stage
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
class StageSwitch:
    """One growth switch: at ``step`` the model grew from ``before`` to ``after`` (hidden x heads x FFN x layers),
    with the held-out metrics just before and just after (empty without held-out batches): what shows that exact
    width growth kept the function and what a depth change cost."""

    step: int
    before: str
    after: str
    parameters: tuple[int, int]
    heldout_before: dict[str, float] = field(default_factory=dict)
    heldout_after: dict[str, float] = field(default_factory=dict)


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
    switches: list[StageSwitch] = field(default_factory=list)


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
    grow_stage: GrowStage | None = None,
) -> TrainResult:
    """Trains until ``cfg.train.total_steps`` (or ``max_steps``, which stops early without changing the schedule),
    resuming from the newest checkpoint in ``cfg.train.out_dir`` when ``resume`` and one exists. With a growth
    schedule, ``grow_stage`` grows the models and optimizer state at each stage's step."""
    spec = cfg.train
    if spec.grad_accum < 1 or spec.batch_size < 1:
        raise UserError("train.batch_size and train.grad_accum must be ≥ 1")
    stages = model_stages(cfg)
    if len(stages) > 1 and grow_stage is None:
        raise ValueError("a run with a growth schedule needs grow_stage (peer.growth.midrun.grow_stage)")
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
    stage = current_stage(models, stages, state.step) if len(stages) > 1 else 0
    stop = min(spec.total_steps, max_steps) if max_steps is not None else spec.total_steps
    models.train()
    start, start_samples = time.perf_counter(), state.samples

    def counted() -> Iterator[dict[str, torch.Tensor]]:
        for batch in train_batches:
            state.batches_consumed += 1
            yield batch

    batches = counted()
    while state.step < stop:
        while stage + 1 < len(stages) and stages[stage + 1][0] <= state.step:  # a stage starts: grow, go on
            parts = Optimization(step, optimizer, scheduler)
            old, new = stages[stage][1], stages[stage + 1][1]
            parts, switch = _switch(models, parts, grow_stage, old, new, state.step, objective, heldout_batches, spec)
            step, optimizer, scheduler, stage = parts.step, parts.optimizer, parts.scheduler, stage + 1
            result.switches.append(switch)
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


def _switch(
    models: PretrainingModels,
    parts: Optimization,
    grow_stage: GrowStage,
    old: ModelSpec,
    new: ModelSpec,
    at_step: int,
    objective: Objective,
    heldout: list[dict[str, torch.Tensor]] | None,
    spec: TrainSpec,
) -> tuple[Optimization, StageSwitch]:
    """Grows ``models`` from stage ``old`` to ``new`` (``switch_stage``), with the held-out metrics on both sides;
    logs one line."""
    before = objective.evaluate(heldout) if heldout else {}
    n_before = sum(p.numel() for p in models.parameters())
    parts = switch_stage(models, parts, grow_stage, old, new, spec)
    if spec.compile:
        compile_models(models)
    after = objective.evaluate(heldout) if heldout else {}
    n_after = sum(p.numel() for p in models.parameters())
    switch = StageSwitch(at_step, _sizes(old), _sizes(new), (n_before, n_after), before, after)
    nan = float("nan")
    held = f"; held-out loss {before.get('loss', nan):.6g} -> {after.get('loss', nan):.6g}" if heldout else ""
    logger.info(
        "step %d: grew the model %s -> %s (%d -> %d parameters)%s",
        at_step,
        switch.before,
        switch.after,
        n_before,
        n_after,
        held,
    )
    return parts, switch


def _sizes(spec: ModelSpec) -> str:
    return f"{spec.hidden_size}x{spec.num_heads}x{spec.ffn_size}x{spec.num_layers}"


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
