"""Growth stages in the single-process trainer: which stage the models are at, and the switch to the next one.

The switch is the trainer's half of mid-run growth: the growth itself (parameters and optimizer state, pure) comes
from the caller as a ``GrowStage`` (``peer.growth.midrun.grow_stage``; ``peer.trainer`` does not import
``peer.growth``), and the trainer rebuilds what holds the old parameters around the grown ones: the modules in the
``PretrainingModels`` the objective reads, the step, the optimizer (with the grown state loaded) and the schedule
(carried on: the same global step, the same lr).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from peer.config import ModelSpec, TrainSpec
from peer.errors import UserError
from peer.modeling import PretrainingModels
from peer.trainer.optim import load_named_optimizer_state, make_optimizer, named_optimizer_state
from peer.trainer.schedule import make_scheduler
from peer.trainer.step import TrainStep

OptimizerState = dict[str, dict[str, torch.Tensor]]
GrowStage = Callable[
    [PretrainingModels, OptimizerState, ModelSpec, ModelSpec], tuple[PretrainingModels, OptimizerState]
]
"""``(models, optimizer state by parameter name, old stage, new stage) -> (grown models, grown state)``."""


def model_sizes(spec: ModelSpec) -> tuple[int, int, int, int]:
    return spec.hidden_size, spec.num_heads, spec.ffn_size, spec.num_layers


def loaded_sizes(models: PretrainingModels) -> tuple[int, int, int, int]:
    c = models.discriminator.config
    return c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers


def current_stage(models: PretrainingModels, stages: list[tuple[int, ModelSpec]], step: int) -> int:
    """The index of the stage whose sizes ``models`` have (sizes strictly grow, so at most one), checked against
    ``step``: a model of a stage that starts after ``step`` cannot be this run's. A model of an earlier stage than
    ``step`` calls for is fine (a checkpoint written at a stage's step, before its switch): it grows at once."""
    sizes = loaded_sizes(models)
    found = [i for i, (_, spec) in enumerate(stages) if model_sizes(spec) == sizes]
    if not found:
        known = ", ".join("x".join(map(str, model_sizes(spec))) for _, spec in stages)
        raise UserError(f"the model's sizes {'x'.join(map(str, sizes))} match no growth stage of the run ({known})")
    if stages[found[0]][0] > step:
        raise UserError(f"the model is stage {found[0]}'s, which starts at step {stages[found[0]][0]}, not at {step}")
    return found[0]


@dataclass
class Optimization:
    """What holds the parameters besides the modules: the step (gradients, loss scale), optimizer and schedule."""

    step: TrainStep
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def switch_stage(
    models: PretrainingModels, parts: Optimization, grow: GrowStage, old: ModelSpec, new: ModelSpec, spec: TrainSpec
) -> Optimization:
    """Grows ``models`` in place (its modules replaced by the grown ones, so whoever holds ``models`` — the
    objective — trains the new stage) and returns the optimization rebuilt around them: the grown optimizer state
    loaded, the schedule's position and current lr carried over, the fp16 loss scale kept."""
    states = named_optimizer_state(parts.optimizer, models.named_parameters())
    grown, grown_states = grow(models, states, old, new)
    models.discriminator, models.generator = grown.discriminator, grown.generator
    params = models.parameters()
    optimizer = make_optimizer(params, spec)
    load_named_optimizer_state(optimizer, models.named_parameters(), grown_states)
    scheduler = make_scheduler(optimizer, spec)
    scheduler.load_state_dict(parts.scheduler.state_dict())
    for group, before in zip(optimizer.param_groups, parts.optimizer.param_groups, strict=True):
        group["lr"] = before["lr"]
    step = TrainStep(parts.step.objective, params, parts.step.spec)
    step.scaler = parts.step.scaler
    return Optimization(step, optimizer, scheduler)
