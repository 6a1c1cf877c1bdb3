"""Who a peer lets into its averaging: the one hook membership (auth) and bans plug into.

A gate answers for a libp2p peer id whether this peer will average with it. The averagers in
``peer.swarm.overrides`` ask the gate on every incoming ``rpc_join_group``, ``rpc_aggregate_part`` and
``rpc_download_state`` and refuse through hivemind's own reject paths when it says no, so a refused peer neither
joins a group, nor has its tensor parts reduced, nor downloads our state. Gates must be cheap and non-blocking:
they run inside the averager's event loop on every request (cache what you read from the DHT).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from hivemind.p2p import PeerID


@runtime_checkable
class PeerGate(Protocol):
    """Decides whether a remote peer may take part in averaging with this peer."""

    def admits(self, peer_id: PeerID) -> bool:
        """True when ``peer_id`` may join our group, send us parts and download our state."""
        ...

    def why_not(self, peer_id: PeerID) -> str:
        """One line for the log / error saying why ``peer_id`` is refused ("" when it is admitted)."""
        ...


@dataclass
class AllGates:
    """Admits a peer only when every gate admits it (an empty list admits everyone).

    Why a conjunction: each gate guards one property (a valid membership token, not banned), and a peer must have
    all of them; the first refusing gate explains the refusal."""

    gates: list[PeerGate] = field(default_factory=list)

    def admits(self, peer_id: PeerID) -> bool:
        return all(gate.admits(peer_id) for gate in self.gates)

    def why_not(self, peer_id: PeerID) -> str:
        for gate in self.gates:
            if not gate.admits(peer_id):
                return gate.why_not(peer_id)
        return ""


@dataclass
class OpenGate:
    """Admits everyone: the gate of an open run with no bans yet, so callers never need a ``None`` check."""

    def admits(self, peer_id: PeerID) -> bool:
        return True

    def why_not(self, peer_id: PeerID) -> str:
        return ""
