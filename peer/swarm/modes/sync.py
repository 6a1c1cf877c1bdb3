"""The "sync" averaging mode: hivemind's default. Peers accumulate gradients until the swarm together reaches
``target_batch_size`` samples, all-reduce them (``compression`` applied to what is sent) and all take the same
optimizer step, so N peers of any speed follow the trajectory of one big-batch job. ``delay_optimizer_step`` overlaps
the step with compute.
"""

from __future__ import annotations

import torch
from hivemind.compression import NoCompression, RoleAdaptiveCompression

from peer.config import SwarmSpec
from peer.swarm.codecs import make_compression
from peer.swarm.modes.base import AveragingMode, OptimizerFactory, refuse_pseudo_gradient_codec
from peer.swarm.overrides.optimizer import GuardedOptimizer
from peer.swarm.round_evidence import OutcomeChannel
from peer.swarm.swarm_optimizer import SwarmOptimizer


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


class SyncMode(AveragingMode):
    """ "sync" (see the module docstring): gradients averaged towards ``target_batch_size``, one optimizer step for
    all; the state carries parameters and optimizer state only."""

    name = "sync"
    extras_per_parameter = 0
    grows_mid_run = True

    def check(self, spec: SwarmSpec) -> None:
        refuse_pseudo_gradient_codec(spec)  # the rounds send gradients

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
