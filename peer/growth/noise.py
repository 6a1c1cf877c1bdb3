"""Seeded symmetry-breaking noise that leaves the grown function unchanged.

A grown model's duplicated units receive identical gradients, so without noise (and without dropout) the copies stay
identical for ever and the large model trains like the small one. For each weight that reads duplicated inputs we add
noise whose columns sum to zero over each group of copies of one input unit: the copies carry equal values, so the
noise contributes ``x_s * sum(z) = 0`` to every output (exact up to rounding) while the columns now differ, and
the gradients flowing back to the copies differ from the first step on.
"""

from __future__ import annotations

import torch

from peer.growth.width import GrownState


def add_symmetric_noise(grown: GrownState, eta: float, rng: torch.Generator) -> None:
    """Adds ``eta * std(W) * z`` to each weight in ``grown.inputs``, ``z`` standard normal centred within each group
    of duplicated inputs. ``eta`` is relative to the weight's own scale. Weights visited in name order, so a seed
    always gives the same noise."""
    if eta <= 0:
        return
    for name in sorted(grown.inputs):
        idx, w = grown.inputs[name], grown.state[name]
        n_src = int(idx.max()) + 1
        counts = torch.bincount(idx, minlength=n_src)
        if int(counts.max()) <= 1:
            continue
        z = torch.randn(w.shape, generator=rng, dtype=torch.float64)
        group_mean = torch.zeros(w.shape[0], n_src, dtype=torch.float64).index_add_(1, idx, z)
        z = z - (group_mean / counts.clamp(min=1).to(torch.float64))[:, idx]
        grown.state[name] = w + eta * w.std() * z
