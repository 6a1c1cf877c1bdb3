"""Masked-LM accuracy and its held-out tally, shared by the ELECTRA generator and ALBERT's MLM head.

Both objectives predict the same kind of rows (``MaskedPositions``: a static K per sequence, filler rows weighted 0),
so the accuracy of one batch and the row-weighted sums over many held-out batches are computed once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from peer.objectives.losses import masked_lm_loss


def masked_hits(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """How many weighted rows of ``logits [B, K, V]`` have their argmax at ``labels [B, K]`` (filler rows: 0)."""
    return ((logits.argmax(-1) == labels).to(weight.dtype) * weight).sum()


def masked_accuracy(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The fraction of weighted rows predicted right (0 when there is none), as a 0-d tensor: no host sync."""
    return masked_hits(logits, labels, weight) / weight.sum().clamp(min=1)


@dataclass
class MaskedLMTally:
    """Held-out masked-LM loss and accuracy over many batches, each batch weighted by its number of predicted rows
    (so the result is the mean over rows, whatever the batches' sizes)."""

    loss_sum: float = 0.0
    rows: float = 0.0
    hits: float = 0.0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> None:
        n = float(weight.sum())
        self.loss_sum += float(masked_lm_loss(logits, labels, weight)) * n
        self.rows += n
        self.hits += float(masked_hits(logits, labels, weight))

    @property
    def loss(self) -> float:
        return self.loss_sum / self.rows

    @property
    def accuracy(self) -> float:
        return self.hits / self.rows
