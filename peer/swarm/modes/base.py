"""The protocol every averaging mode implements (``AveragingMode``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from peer.config import SwarmSpec
from peer.errors import UserError
from peer.swarm.codecs import PSEUDO_GRADIENT_ONLY
from peer.swarm.round_evidence import OutcomeChannel
from peer.swarm.swarm_optimizer import SwarmOptimizer

OptimizerFactory = Callable[[Sequence], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]


class AveragingMode(Protocol):
    """What differs between the averaging modes of ``SwarmSpec.averaging``: one object per mode in ``MODES``, found by
    ``averaging_mode``. The rest of the peer asks it instead of testing the mode's name: how the optimizer is
    built (``build``), how many tensors the state carries beside each parameter (``extras_per_parameter``: the
    extra tensors of hivemind's state download, a checkpoint's ``outer_momentum/``), and what peers of one run
    must agree on (``fingerprint``), which settings it accepts (``check``), whether a peer may grow its model mid-run
    in it (``grows_mid_run``) and how the peer's startup line names it (``describe``). A new mode is a module in
    ``peer.swarm.modes`` with its class, its entry in ``MODES``, and its name (and settings) in
    ``peer.config.SwarmSpec``."""

    name: str
    extras_per_parameter: int
    grows_mid_run: bool
    """Whether a peer of this mode may switch to a grown model at a ``growth.schedule`` step
    (``peer.swarm.stage_switch``); the CLI refuses a schedule in a mode that may not."""

    def check(self, spec: SwarmSpec) -> None:
        """Raises UserError in one line for settings this mode cannot run with (before any DHT is started)."""
        ...

    def describe(self, spec: SwarmSpec) -> str:
        """The mode as the peer's startup line shows it ("sync", "diloco with overlapped rounds")."""
        return spec.averaging

    def build(self, spec: SwarmSpec, shared: dict, outcomes: OutcomeChannel | None) -> SwarmOptimizer:
        """The peer's optimizer. ``shared`` holds the ``GuardedOptimizer`` arguments every mode passes (DHT, run_id,
        ``params`` (maybe param groups), the ``optimizer`` and ``scheduler`` factories, timeouts, the averagers'
        guard, ...); ``outcomes`` is where the robust reducer's verdicts arrive (None: robust averaging off)."""
        ...

    def fingerprint(self, spec: SwarmSpec) -> dict:
        """This mode's part of ``peer.swarm.metrics.swarm_fingerprint``: the settings whose mismatch makes peers send
        tensors of the wrong shape or meaning. Changing it for an existing mode splits running swarms."""
        return {"averaging": self.name, "target_batch_size": spec.target_batch_size}


def refuse_pseudo_gradient_codec(spec: SwarmSpec) -> None:
    """UserError for a ``compression`` that codes pseudo-gradients with error feedback only (``PSEUDO_GRADIENT_ONLY``),
    in a mode or setting whose rounds send other values: it would quantise the values averaged."""
    if spec.compression in PSEUDO_GRADIENT_ONLY:
        raise UserError(
            f"swarm.compression: {spec.compression} is for DiLoCo pseudo-gradients with error feedback and needs "
            "swarm.averaging: diloco with swarm.overlap_rounds: true (otherwise it would quantise the values averaged)"
        )
