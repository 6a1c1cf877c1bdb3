"""DiLoCo's outer optimizer (SGD with Nesterov momentum on the averaged pseudo-gradient), used by the "diloco"
averaging mode (``peer.swarm.modes.diloco``) and applied by ``peer.swarm.swarm_optimizer.SwarmOptimizer``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class OuterNesterov:
    """DiLoCo's outer optimizer: SGD with Nesterov momentum on the averaged pseudo-gradient ``anchor - params``.

    ``anchor`` holds the parameters at the start of the round; ``momentum`` is shared through the state averager."""

    params: list[torch.Tensor]
    lr: float
    momentum_factor: float
    anchor: list[torch.Tensor] = field(init=False)
    momentum: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.anchor = [p.detach().clone() for p in self.params]
        self.momentum = [torch.zeros_like(p, device="cpu") for p in self.params]

    @torch.no_grad()
    def step(self) -> None:
        for param, anchor, buf in zip(self.params, self.anchor, self.momentum, strict=True):
            delta = anchor - param.detach()
            buf.mul_(self.momentum_factor).add_(delta.to(buf.device))
            update = delta + self.momentum_factor * buf.to(delta.device)
            param.copy_(anchor - self.lr * update)
            anchor.copy_(param)

    @torch.no_grad()
    def apply_round(
        self,
        averaged: Sequence[torch.Tensor],
        averaged_momentum: Sequence[torch.Tensor] | None,
        snapshot: Sequence[torch.Tensor],
    ) -> None:
        """The outer step of a round that ran in the background (``peer.swarm.overlap``): the same update as
        ``step`` computed from the round's ``averaged`` snapshot, with the local progress made since the ``snapshot``
        kept on top of the new anchor. ``averaged_momentum`` (None: not averaged) replaces the momentum first."""
        momenta = averaged_momentum if averaged_momentum is not None else [None] * len(self.params)
        for param, anchor, buf, avg, avg_buf, snap in zip(
            self.params, self.anchor, self.momentum, averaged, momenta, snapshot, strict=True
        ):
            if avg_buf is not None:
                buf.copy_(avg_buf)
            delta = anchor - avg.to(anchor.device)
            buf.mul_(self.momentum_factor).add_(delta.to(buf.device))
            target = anchor - self.lr * (delta + self.momentum_factor * buf.to(delta.device))
            param.add_(target - snap)
            anchor.copy_(target)

    @torch.no_grad()
    def reset_anchor(self) -> None:
        """After a state download the downloaded parameters are the new round's start."""
        for param, anchor in zip(self.params, self.anchor, strict=True):
            anchor.copy_(param)
