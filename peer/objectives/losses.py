"""The loss terms as pure functions of logits, labels and 0/1 weights, so tests can check them by hand.

Every term is a weighted mean: sum(loss x weight) / sum(weight). Weights are how padding, special tokens and
static-shape filler rows are kept out of a loss without changing tensor shapes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.to(values.dtype)
    return (values * weight).sum() / weight.sum().clamp(min=1.0)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits [B, K, V]`` against ``labels [B, K]``, averaged over rows with weight 1 (in fp32)."""
    ce = F.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), reduction="none")
    return _weighted_mean(ce, weight.flatten())


def replaced_token_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the discriminator's ``logits [B, L]`` (1 = replaced), over tokens with weight 1."""
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
    return _weighted_mean(bce, weight)


def electra_loss(mlm: torch.Tensor, disc: torch.Tensor, disc_weight: float) -> torch.Tensor:
    """ELECTRA's total: generator MLM + λ x discriminator BCE (λ = 50 in the paper)."""
    return mlm + disc_weight * disc


def sentence_order_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the SOP head's ``logits [B, 2]`` against 0 = in order, 1 = swapped."""
    return F.cross_entropy(logits.float(), labels)
