"""What every pretraining objective guarantees to the trainer and the swarm loop.

An objective owns the models it trains and one seeded ``torch.Generator`` on the models' device that draws all of
its randomness (masking, corruption, sampling). Its ``state_dict`` is that generator's state, so checkpointing it
makes a resumed run draw the same masks as an uninterrupted one. Evaluation draws from a fresh generator seeded
the same way on every call: the held-out numbers of two evaluations differ only because the weights did.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from peer.modeling import PretrainingModels

# Offset so that evaluation masks never coincide with the first training masks of the same seed.
EVAL_SEED_OFFSET = 1_000_003


@dataclass
class ObjectiveOutput:
    """``loss`` is what to backpropagate; ``metrics`` are detached floats for logging (their keys are stable)."""

    loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def metrics_to_floats(metrics: dict) -> dict[str, float]:
    """The metrics as Python floats, read from the device in one transfer. Why one: each ``float(tensor)`` of a GPU
    tensor waits for the device, and an objective reports several metrics every micro-batch."""
    keys = [k for k, v in metrics.items() if torch.is_tensor(v)]
    if not keys:
        return {k: float(v) for k, v in metrics.items()}
    device = metrics[keys[0]].device
    values = torch.stack([metrics[k].detach().reshape(()).to(device, torch.float64) for k in keys]).tolist()
    read = dict(zip(keys, values, strict=True))
    return {k: read[k] if k in read else float(v) for k, v in metrics.items()}


class Objective(ABC):
    """A callable ``objective(batch) -> ObjectiveOutput`` over a Batch-contract dict of (CPU or device) tensors."""

    def __init__(self, models: PretrainingModels, seed: int):
        self.models = models
        self.seed = seed
        self.device = next(models.discriminator.parameters()).device
        self.rng = torch.Generator(device=self.device).manual_seed(seed)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def __call__(self, batch: dict[str, torch.Tensor]) -> ObjectiveOutput:
        out = self.forward(self.to_device(batch), self.rng)
        out.metrics = metrics_to_floats(out.metrics)
        return out

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor], rng: torch.Generator) -> ObjectiveOutput:
        """Loss and metrics (as 0-d tensors, converted once by ``__call__``) for one on-device batch."""

    @abstractmethod
    def evaluate(self, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, float]:
        """Held-out metrics over ``batches``, in eval mode and without gradient; restores the previous mode."""

    def eval_rng(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + EVAL_SEED_OFFSET)

    @contextmanager
    def evaluating(self) -> Iterator[torch.Generator]:
        """What ``evaluate`` runs in: eval mode, and a fresh evaluation generator (the value); the mode the models
        were in is restored on leaving, also by an exception."""
        was_training = self.models.discriminator.training
        self.models.eval()
        try:
            yield self.eval_rng()
        finally:
            self.models.train(was_training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"rng_state": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.rng.set_state(state["rng_state"].cpu())


def binary_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties counting half
    (Mann-Whitney U with average ranks). NaN when one class is absent."""
    scores = scores.detach().double().flatten().cpu()
    labels = labels.detach().bool().flatten().cpu()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # Average ranks over ties: every member of a run of equal scores gets the run's mean rank.
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
