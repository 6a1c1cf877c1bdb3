"""The one training step that ``peer train``, ``peer join`` and every rank of a multi-GPU peer run.

A step is: ``grad_accum`` micro-batches forward and backward (their mean loss's gradients land in ``.grad``), the
non-finite guard, fp16 loss un-scaling, clipping at ``clip_norm``, then the caller's optimizer step and the loss
scale's update. Its phases are separate methods because a multi-GPU peer reduces the ranks' gradients between
them: every rank runs ``backward`` and ``unscale``; only the rank that steps (the leader, or the single process)
clips the group's mean gradient with ``clip``; every rank calls ``update_scale``. Each rank un-scales its own
gradients before the reduction, so the ranks' loss scales may differ without changing the mean.

Why clipping sits here and not in an optimizer: hivemind's optimizer takes the gradients in ``.grad`` when
``step`` is called (accumulating them towards the swarm's batch, or stepping locally in DiLoCo), so they must be
clipped before that call; a peer that clipped nowhere (``peer join`` did not) sent every spike to the swarm.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from peer.objectives import ObjectiveOutput
from peer.objectives.base import metrics_to_floats
from peer.trainer.hardware import Precision

logger = logging.getLogger(__name__)

StepObjective = Callable[[dict], "ObjectiveOutput | torch.Tensor"]
"""A batch's objective: an ``ObjectiveOutput`` (loss and metrics), or a bare loss tensor (benches, toy tests)."""


@dataclass(frozen=True)
class StepSpec:
    """How one step is computed: micro-batches per step, the clipping threshold (0: no clipping, the norm is
    still measured), the device type autocast runs on, and the precision."""

    grad_accum: int = 1
    clip_norm: float = 0.0
    device_type: str = "cpu"
    precision: Precision = field(default_factory=Precision)

    def __post_init__(self) -> None:
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")


@dataclass
class Computed:
    """What ``backward`` measured: the mean loss and metrics over the micro-batches, the samples they held, and
    whether every loss was finite (a non-finite one stops the step: no later micro-batch is computed)."""

    loss: float
    metrics: dict[str, float]
    samples: int
    healthy: bool


class _ParamsAsOptimizer:
    """What ``GradScaler.unscale_`` reads of an optimizer (its ``param_groups``). Why: the swarm's optimizer is
    hivemind's, which takes the gradients only when it steps, so the step un-scales them itself, before clipping
    and before the ranks' reduction, with GradScaler's own inf/NaN bookkeeping."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.param_groups = [{"params": list(params)}]


def _all_finite(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Whether every gradient is finite, as a 0-d device tensor (no wait for the device)."""
    return torch.stack([torch.isfinite(g).all() for g in grads]).all()


def grads_are_finite(params: Sequence[torch.Tensor]) -> bool:
    """Every gradient finite: one read from the device for all of them (one per tensor waited once per tensor)."""
    grads = [p.grad for p in params if p.grad is not None]
    return not grads or bool(_all_finite(grads))


@torch.no_grad()
def grad_norm(params: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all gradients together, as the optimizer will read them."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.get_total_norm(grads, 2.0))


class TrainStep:
    """The step's computation over ``params`` with ``objective`` (see the module's docstring for the phases).
    It owns the fp16 loss scaler (``scaler``, None in other precisions), so one instance lives as long as the
    training loop."""

    def __init__(self, objective: StepObjective, params: Sequence[torch.nn.Parameter], spec: StepSpec) -> None:
        self.objective = objective
        self.params = list(params)
        self.spec = spec
        self.scaler = torch.amp.GradScaler(spec.device_type) if spec.precision.scaled else None
        self._as_optimizer = _ParamsAsOptimizer(self.params)
        # the gradients' norm as ``unscale`` read it with the finite check (device tensor, value); ``clip`` uses it
        self._measured: tuple[torch.Tensor, float] | None = None

    def backward(self, batches: Iterator[dict]) -> Computed:
        """``grad_accum`` micro-batches from ``batches`` forward and backward; the gradient of their mean loss is
        added to ``.grad`` (scaled by the loss scale in fp16)."""
        n = self.spec.grad_accum
        sums: dict[str, float] = {}
        samples = 0
        loss_sum = 0.0
        for _ in range(n):
            batch = next(batches)
            samples += _batch_samples(batch)
            out = self._forward(batch)
            loss = out.loss
            loss_value = float(loss.detach())  # the finite guard's one wait for the device, before any backward
            if not math.isfinite(loss_value):
                logger.warning("non-finite loss %s: skipping this step, nothing sent to the optimizer", loss_value)
                return Computed(float("nan"), {}, samples, healthy=False)
            scaled = loss / n
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += loss_value
            for key, value in metrics_to_floats(out.metrics).items():
                sums[key] = sums.get(key, 0.0) + float(value) / n
        sums.pop("loss", None)  # the mean loss is Computed.loss
        return Computed(loss_sum / n, sums, samples, healthy=True)

    def unscale(self, computed: Computed) -> bool:
        """Un-scales the gradients (fp16) and checks them: True when the step may go on. A rank of a multi-GPU
        peer calls it before the gradients are reduced, so each rank's scale stays its own business.

        The check and the gradients' norm (kept for ``clip``) are read from the device together: the step's one wait
        after the backward pass."""
        self._measured = None
        if self.scaler is not None:
            self.scaler.unscale_(self._as_optimizer)
        if not computed.healthy:
            return False
        grads = [p.grad for p in self.params if p.grad is not None]
        finite = True
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, 2.0)
            finite_flag, norm_value = torch.stack([_all_finite(grads).to(norm.dtype), norm]).tolist()
            finite = bool(finite_flag)
            self._measured = (norm, norm_value)
        if not finite:
            what = "gradients overflowed in fp16: lowering the loss scale" if self.scaler else "non-finite gradients"
            logger.warning("%s; skipping this step, nothing sent to the optimizer", what)
            return False
        return True

    def clip(self, measure_again: bool = False) -> tuple[float, float]:
        """Clips the gradients (the group's mean on a multi-GPU peer) to ``clip_norm``; returns their norm before
        and after.

        The norm is the one ``unscale`` read with its finite check, unless ``measure_again`` (a multi-GPU peer's
        gradients were reduced since) or there is none. The clipping is ``clip_grad_norm_``'s own (its two halves,
        ``get_total_norm`` then ``clip_grads_with_norm_``: the same gradients to the bit), and the norm after is
        the norm before times the factor the gradients were multiplied by (equal up to rounding), so a step waits
        for the device once, not three times."""
        measured, self._measured = self._measured, None
        if measure_again or measured is None:
            grads = [p.grad for p in self.params if p.grad is not None]
            if not grads:
                return 0.0, 0.0
            norm = torch.nn.utils.get_total_norm(grads, 2.0)
            measured = (norm, float(norm))
        norm, before = measured
        if self.spec.clip_norm <= 0:
            return before, before
        torch.nn.utils.clip_grads_with_norm_(self.params, self.spec.clip_norm, norm)
        return before, before * min(1.0, self.spec.clip_norm / (before + 1e-6))

    def update_scale(self) -> None:
        """After the step (taken or skipped): fp16's loss scale goes down after an overflow, up after a run of
        finite steps (GradScaler's schedule)."""
        if self.scaler is not None:
            self.scaler.update()

    def autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.spec.precision.dtype
        return torch.autocast(self.spec.device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()

    def _forward(self, batch: dict) -> ObjectiveOutput:
        with self.autocast():
            out = self.objective(batch)
        return out if isinstance(out, ObjectiveOutput) else ObjectiveOutput(out)


@dataclass
class StepOutcome:
    """One whole step of a single process (``run_step``): its measurements and whether the optimizer stepped."""

    computed: Computed
    stepped: bool
    grad_norm: float = math.nan  # before clipping
    clipped_norm: float = math.nan  # what the optimizer read


def run_step(step: TrainStep, batches: Iterator[dict], optimizer_step: Callable[[], object]) -> StepOutcome:
    """A single process's whole step: backward, guard, clip, ``optimizer_step()`` when healthy, the scale's update.
    The caller zeroes the gradients afterwards (hivemind's optimizer and a torch one do it differently)."""
    computed = step.backward(batches)
    outcome = StepOutcome(computed, stepped=False)
    if step.unscale(computed):
        outcome.grad_norm, outcome.clipped_norm = step.clip()
        optimizer_step()
        outcome.stepped = True
    step.update_scale()
    return outcome


def _batch_samples(batch: dict) -> int:
    first = batch.get("input_ids")
    if first is None:
        first = next(iter(batch.values()))
    return int(first.shape[0])


def eval_due(local_step: int, every: int) -> bool:
    """Whether a held-out evaluation is due after ``local_step`` (``every`` <= 0: never)."""
    return every > 0 and local_step > 0 and local_step % every == 0
