"""The peer's gradient averager (``GuardedGradientAverager``): hivemind's ``GradientAverager`` behind the guard
(``peer.swarm.overrides.guard``), with page-locked averaged gradients on CUDA.

Replaces (hivemind 1.1.12): ``GradientAverager.load_accumulators_into_averager_``, ``run_in_background`` (extended).
Plugged in through ``hivemind.Optimizer(grad_averager_factory=)``.
"""

from __future__ import annotations

import logging

import torch
from hivemind.optim.grad_averager import GradientAverager

from peer.swarm.host_buffers import CopyFence, pin_shared
from peer.swarm.overrides.guard import GuardedAveragerMixin
from peer.swarm.round_evidence import GRADIENTS

logger = logging.getLogger(__name__)


class GuardedGradientAverager(GuardedAveragerMixin, GradientAverager):
    """The gradient averager; with a model on CUDA its averaged gradients (the buffers the accumulated gradients
    cross into every global step, and the offloaded optimizer's ``.grad``) are page-locked in place
    (``peer.swarm.host_buffers``) and filled by asynchronous copies with one wait."""

    outcome_kind = GRADIENTS

    def __init__(self, parameters, *args, **kwargs):
        parameters = tuple(parameters)
        self._copies = CopyFence(parameters[0].device if parameters else "cpu")
        super().__init__(parameters, *args, **kwargs)

    def run_in_background(self, *args, **kwargs) -> None:
        """hivemind's start of the averager's process, then (CUDA) the averaged gradients page-locked: only after the
        fork, which must map them (the driver may leave registered pages out of a forked child)."""
        super().run_in_background(*args, **kwargs)
        if self._copies.active:
            with self.get_tensors() as averaged_grads:
                pinned = pin_shared(averaged_grads)
            logger.debug("page-locked %d of %d averaged gradient buffers", pinned, len(averaged_grads))

    @torch.no_grad()
    def load_accumulators_into_averager_(self):
        """hivemind 1.1.12 ``GradientAverager.load_accumulators_into_averager_`` (copy each accumulator into its
        averaged buffer, then scale it by 1 / accumulations on the host) with every copy issued before one wait.

        Why the wait: hivemind scales each buffer right after its ``copy_(non_blocking=True)``, which is safe only
        because a copy into pageable memory is synchronous; into the pinned buffers it is not, and the host would
        scale, and the averager send, what was there before. On CPU the same copies and products in another order:
        the same values."""
        grad_scale = (1.0 / self.local_times_accumulated) if self.local_times_accumulated != 0 else 0.0
        with self.get_tensors() as averaged_grads:
            for grad_acc, averaged_grad in zip(self._grad_accumulators(), averaged_grads, strict=True):
                averaged_grad.copy_(grad_acc, non_blocking=True)
            self._copies.mark()
            self._copies.wait()
            for averaged_grad in averaged_grads:
                averaged_grad.mul_(grad_scale)
