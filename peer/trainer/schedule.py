"""Learning-rate schedule: linear warmup to the peak, then linear decay to 0 at ``total_steps`` (BERT / ELECTRA /
ALBERT). A pure ``lr_factor`` so the swarm can evaluate it at the *global* step as well."""

from __future__ import annotations

import functools

import torch

from peer.config import TrainSpec


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): (step+1)/warmup during warmup, then linear to 0
    at ``total_steps``, and 0 after it."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def make_scheduler(optimizer: torch.optim.Optimizer, spec: TrainSpec) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following ``lr_factor``; usable as a ``hivemind.Optimizer`` scheduler factory."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup_steps=spec.warmup_steps, total_steps=spec.total_steps)
    )
