"""Error feedback for a lossy pseudo-gradient codec (SparseLoCo-style): what a round's compression lost is added to
this peer's next pseudo-gradient, so that over rounds nothing is lost, only delayed.

Why here and not in the codec: a hivemind codec is called once per tensor part with no memory of earlier calls, and
the all-reduce splits tensors into parts differently in every group. The residual belongs to the peer and its
pseudo-gradients: ``peer.swarm.overlap.BackgroundRound`` compresses them with ``ErrorFeedback.compress`` before the
round, puts the result (already on the codec's grid) into the averager's buffers, and tells the feedback whether the
round applied it (``commit``) or not (``drop``).

Why compress before the round rather than read the loss off the round: hivemind averages by the delta rule (a
sender adds ``average - decoded(own part)`` to its *own* uncompressed values), so each peer's result would carry its
own compression error and the peers would leave the round with different updates. A value already on the grid is
sent without loss (decoding it gives it back, bit for bit), so every peer applies the same average
(``peer.swarm.overrides.allreduce`` makes the reply common too), and the loss ``value - decoded`` is known exactly.

Memory: one fp32 residual per parameter, kept across rounds (``nbytes``). A state download (a joiner, a catch-up
after a missed round) resets it to zero: it is what *our* past pseudo-gradients lost, from a trajectory the download
replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from peer.swarm.blockwise4bit import Blockwise4BitQuantization


@dataclass
class ErrorFeedback:
    """Per-peer residuals of ``codec`` for tensors shaped like ``like``; at most one round's pending at a time."""

    like: Sequence[torch.Tensor]
    codec: Blockwise4BitQuantization = field(default_factory=Blockwise4BitQuantization)
    residual: list[torch.Tensor] = field(init=False)
    pending: list[torch.Tensor] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.residual = [torch.zeros_like(t, dtype=torch.float32, device="cpu") for t in self.like]

    @property
    def nbytes(self) -> int:
        return sum(r.numel() * r.element_size() for r in self.residual)

    @torch.no_grad()
    def compress(self, values: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``decoded(value + residual)`` for each value: what this peer sends this round; the loss is kept pending
        until the round says whether it applied these (``commit``) or this peer's raw values (``drop``)."""
        sent, lost = [], []
        for value, residual in zip(values, self.residual, strict=True):
            target = value.detach().to(device="cpu", dtype=torch.float32) + residual
            decoded = self.codec.roundtrip(target)
            sent.append(decoded)
            lost.append(target - decoded)
        self.pending = lost
        return sent

    def commit(self) -> None:
        """The round applied what ``compress`` returned (averaged or, with no group, alone): its loss carries over."""
        if self.pending is not None:
            self.residual, self.pending = self.pending, None

    def drop(self) -> None:
        """The round applied nothing of it (cancelled, or this peer's raw pseudo-gradient): the residual stays."""
        self.pending = None

    def reset(self) -> None:
        """After a state download (see the module docstring)."""
        self.pending = None
        for residual in self.residual:
            residual.zero_()
