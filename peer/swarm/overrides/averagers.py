"""hivemind averagers that ask a ``PeerGate`` before averaging with anyone and reduce their parts robustly: which
classes a peer uses (``AveragerKinds``).

- ``guard.py``: ``AveragerGuard`` and ``GuardedAveragerMixin``, the gate and robust reduction of both averagers;
- ``gradient_averager.py``: ``GuardedGradientAverager``;
- ``state_averager.py``: ``GuardedStateAverager`` (with ``RoundCheckedDownload`` and ``CancellableRounds``).

Plugged in without touching hivemind: the gradient averager through ``hivemind.Optimizer(grad_averager_factory=)``,
the state averager (parameters: diloco's averaging, sync mode's periodic state averaging) through an Optimizer
subclass overriding ``_make_state_averager``. Both averagers run in their own forked process, so everything in them
(the gate, the reducer, the outcome sink) runs there; outcomes reach the training process through ``OutcomeChannel``.
"""

from __future__ import annotations

from dataclasses import dataclass

from peer.swarm.overrides.gradient_averager import GuardedGradientAverager
from peer.swarm.overrides.state_averager import GuardedStateAverager


@dataclass(frozen=True)
class AveragerKinds:
    """The averager classes a peer uses; the fault-injection bench substitutes attacker subclasses here."""

    gradient: type[GuardedGradientAverager] = GuardedGradientAverager
    state: type[GuardedStateAverager] = GuardedStateAverager
