"""Before a peer joins any round: can the swarm connect to it? Asked of the coordinator (``coordinator.reachability``
dials back the caller's own address at the ports this peer's DHT listens on).

Why ask: a peer behind NAT or a firewall that did not say ``--client_mode`` announces addresses nobody can dial;
the others put it in their averaging groups and wait out their timeouts on it, round after round, and the volunteer
sees nothing wrong. Told in one line at start-up, they rejoin with ``--client_mode`` (which always works: such a peer
dials out and never waits to be dialled) or forward a port.

Only a definite "no" stops the peer: a coordinator that cannot answer (an older one, a network error) is logged and
the peer goes on, as it did before this check existed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import httpx

from peer.errors import UserError

logger = logging.getLogger(__name__)

CHECK_TIMEOUT = 20.0  # seconds for the whole request; the coordinator dials each port for at most 3 s
_TCP4 = re.compile(r"^/ip4/[0-9.]+/tcp/(\d+)(?:/|$)")


def listening_ports(maddrs: Iterable[str]) -> list[int]:
    """The TCP ports of this peer's IPv4 listen addresses (its relay and QUIC addresses are not dialled back)."""
    ports = []
    for maddr in maddrs:
        found = _TCP4.match(str(maddr))
        if found and "/p2p-circuit" not in str(maddr) and int(found.group(1)) not in ports:
            ports.append(int(found.group(1)))
    return ports


def check_reachable(coordinator_url: str, maddrs: Iterable[str], timeout: float = CHECK_TIMEOUT) -> None:
    """Raises ``UserError`` with the advice when the coordinator reports none of this peer's ports reachable;
    returns quietly when one is, and with a warning when the coordinator could not be asked."""
    maddrs = [str(m) for m in maddrs]
    ports = listening_ports(maddrs)
    if not ports:
        logger.info("reachability not checked: no IPv4 TCP listen address among %s", " ".join(maddrs))
        return
    url = coordinator_url.rstrip("/") + "/api/v1/reachability"
    try:
        response = httpx.post(url, json={"ports": ports[:4]}, timeout=timeout)
        response.raise_for_status()
        answer = response.json()
        address, reachable = str(answer["address"]), {int(p): bool(ok) for p, ok in answer["reachable"].items()}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
        logger.warning("could not check whether the swarm can reach this peer (%s); going on", str(e)[:200])
        return
    if any(reachable.values()):
        logger.info("reachable: the coordinator connected back to %s at TCP port %s", address,
                    ", ".join(str(p) for p, ok in reachable.items() if ok))  # fmt: skip
        return
    port = ports[0]
    raise UserError(
        f"the swarm cannot connect to this machine (the coordinator dialled {address} at TCP port "
        f"{', '.join(map(str, reachable))} and got no answer: NAT or a firewall); join again with --client_mode, "
        f"or forward a fixed TCP port to this machine and pass --host_maddrs /ip4/0.0.0.0/tcp/{port} "
        f"--announce_maddrs /ip4/{address}/tcp/{port}"
    )
