"""DiLoCo's outer round in the background: peers keep training while the round's all-reduce runs.

Why: with the round inside ``step()`` (hivemind's state averaging with ``delay_state_averaging=False``), every peer
stands idle for the round: matchmaking, compression and the transfer of the parameters and momentum. On a 100 mbit
link that is seconds per round, which caps compute utilisation well below the 90–95 % OpenDiLoCo reports (measured
by ``bench/swarm.py``). hivemind's own ``delay_state_averaging`` with local updates does not help: its delta-rule
averager makes the very next local step wait for the round.

How (the one-round-delayed outer step of overlapping DiLoCo variants, e.g. Streaming DiLoCo): when the global step
advances, the peer copies its parameters (and the outer momentum) into the state averager's buffers and starts the
all-reduce on them without waiting. Training goes on from the same parameters. When the round is done, the outer
Nesterov step is computed from the averaged snapshot exactly as in the blocking mode, giving the round's new
``anchor``, and the progress the peer made since the snapshot is kept on top of it:
``params += new_anchor - snapshot``. The next round's pseudo-gradient then counts each local step exactly once.
A round that failed or found no group leaves the peer's own values in the buffers: it applies its own
pseudo-gradient, as the blocking mode does. So does a round that matched peers of another round: matchmaking does
not look at the epoch, so when rounds outlast a global step (a slow link, a loaded machine) one peer's round ``e``
can meet another's ``e - 1``; the epochs gathered in the round tell, and such a mixed round is dropped.

With a pseudo-gradient codec (``compression: blockwise4bit``, ``feedback`` set) the buffers carry the pseudo-gradient
``anchor - params`` plus the residual of earlier rounds, compressed by ``peer.swarm.feedback.ErrorFeedback``, instead
of the parameters: 4 bits cannot carry parameter values (half a step of a block's largest weight), but can carry
their change, and the residual carries what they lose. The averaged pseudo-gradient comes back as parameters,
``anchor - average``, so the outer step is the same.

Costs: one copy of the parameters (the snapshot) while a round runs. What differs from the blocking mode: the inner
steps taken during the round start from pre-round parameters (a delay of one round's communication, a few seconds
against minutes of local steps), and two peers' parameters are equal only up to their own steps since the snapshot:
their anchors are what the round makes equal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.averaging.control import StepControl

from peer.swarm.feedback import ErrorFeedback

logger = logging.getLogger(__name__)


@dataclass
class BackgroundRound:
    """At most one outer round in flight for a peer's state averager; see the module docstring.

    ``params`` are the model's parameters (what the averager's first buffers mirror), ``momentum`` the outer
    momentum buffers (the averager's extra tensors, averaged after the parameters when ``average_momentum``).
    With ``feedback``, the first buffers carry the compressed pseudo-gradients against ``anchor`` instead."""

    averager: DecentralizedAverager
    params: Sequence[torch.Tensor]
    momentum: Sequence[torch.Tensor]
    average_momentum: bool
    timeout: float
    anchor: Sequence[torch.Tensor] | None = None  # the outer anchor, constant while a round is in flight
    feedback: ErrorFeedback | None = None
    control: StepControl | None = None
    snapshot: list[torch.Tensor] = field(default_factory=list)
    own_momentum: list[torch.Tensor] = field(default_factory=list)  # ours at the start, while it is averaged
    epoch: int = -1
    rounds_started: int = 0
    rounds_averaged: int = 0  # rounds that found a group (the others applied this peer's own values)
    last_averaged: bool = False  # whether the last finished round found a group

    @property
    def pending(self) -> bool:
        return self.control is not None

    @torch.no_grad()
    def start(self, epoch: int) -> None:
        """Snapshots the parameters (with ``feedback``: their compressed pseudo-gradients) into the averager's
        buffers and starts the all-reduce; returns at once."""
        assert self.control is None, "one outer round at a time: finish() the previous one first"
        sent = list(self.params)
        if self.feedback is not None:
            assert self.anchor is not None, "error feedback compresses pseudo-gradients: the anchor is needed"
            sent = self.feedback.compress([a - p.detach() for a, p in zip(self.anchor, self.params, strict=True)])
        with self.averager.get_tensors() as buffers:
            local = sent + (list(self.momentum) if self.average_momentum else [])
            assert len(buffers) == len(local), "the state averager's tensors do not match the parameters"
            for buffer, tensor in zip(buffers, local, strict=True):
                buffer.copy_(tensor.detach().to(buffer.device))
        self.snapshot = [p.detach().clone() for p in self.params]
        self.own_momentum = [m.detach().clone() for m in self.momentum] if self.average_momentum else []
        self.epoch = epoch
        self.rounds_started += 1
        self.control = DecentralizedAverager.step(self.averager, gather=epoch, timeout=self.timeout, wait=False)

    def done(self) -> bool:
        return self.control is not None and self.control.done()

    def finish(self, wait: float | None = 0.0) -> tuple[list[torch.Tensor], list[torch.Tensor] | None] | None:
        """The round's averaged (parameters, momentum or None) once it is over, else None. ``wait``: seconds to wait
        for it (None: until the averager's own timeout). The peer's own values come back from a failed round."""
        if self.control is None:
            return None
        if not self.control.done():
            if wait == 0.0:
                return None
            try:
                self.control.result(timeout=wait if wait is not None else self.timeout + 5.0)
            except Exception:  # a failure is read below; a timeout gives the round up
                if not self.control.done():
                    self.control.cancel()
        self.last_averaged = False
        mixed = False
        try:
            gathered = self.control.result(timeout=0)
            epochs = sorted({e for e in gathered.values() if isinstance(e, int)} | {self.epoch})
            mixed = len(epochs) > 1
            if mixed:
                logger.warning(
                    "outer round %d was averaged with peers in rounds %s: dropping it, applying this peer's own "
                    "pseudo-gradient", self.epoch, epochs,
                )  # fmt: skip
            elif len(gathered) > 1:
                self.rounds_averaged += 1
                self.last_averaged = True
        except Exception as e:
            logger.info("outer round %d did not average (%s): applying this peer's own pseudo-gradient", self.epoch, e)
        self.control = None
        if mixed:  # our values from the start of the round, as after a round that found no group
            if self.feedback is not None:
                self.feedback.drop()  # our raw pseudo-gradient is applied: nothing of this round was lost
            return [s.clone() for s in self.snapshot], ([m.clone() for m in self.own_momentum] or None)
        n = len(self.params)
        with self.averager.get_tensors() as buffers:
            averaged = [b.detach().clone() for b in buffers[:n]]
            momentum = [b.detach().clone() for b in buffers[n:]] if self.average_momentum else None
        if self.feedback is not None:  # averaged (or, failed, our own compressed) pseudo-gradients: applied
            self.feedback.commit()
            averaged = [a - g.to(a.device) for a, g in zip(self.anchor, averaged, strict=True)]
        return averaged, momentum

    def cancel(self) -> None:
        """Drops the round in flight (a state download replaced the parameters it was computed from)."""
        if self.control is not None and not self.control.done():
            self.control.cancel()
        self.control = None
        self.snapshot = []
        if self.feedback is not None:
            self.feedback.drop()
