"""Dial-back reachability check: can the swarm open a connection to a volunteer's listening ports?

Why: a peer behind NAT or a firewall that does not say ``--client_mode`` announces addresses nobody can dial. Others
then pick it for averaging groups and wait out their timeouts on it, round after round: it stalls the swarm instead
of failing. libp2p's AutoNAT answers the same question from other peers; the coordinator is the one party every
volunteer already talks to, so it answers here, before the volunteer joins any round.

What is dialled: only the address the request came from, at the ports the volunteer lists. So the check is about the
caller and nobody else (no port scan of third parties through the coordinator), and it is what NAT decides: behind
masquerade the request arrives from the router's address, where nothing forwards the peer's port, and the dial fails.
A plain TCP connect is enough: it fails exactly where a libp2p dial would fail to start.
"""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

MAX_PORTS = 4  # a peer listens on one or two TCP ports (ip4, ip6); more is not a peer asking about itself
DIAL_TIMEOUT = 3.0  # seconds per port; a reachable port answers a loopback or LAN dial in milliseconds
MAX_CONCURRENT_CHECKS = 8  # checks run at once; more wait (a burst of joiners cannot pile up threads)


class BadReachabilityRequest(ValueError):
    """A malformed request body; the message is the one line the HTTP 400 says."""


@dataclass(frozen=True)
class ReachabilityRequest:
    ports: tuple[int, ...]

    @classmethod
    def parse(cls, body: object) -> ReachabilityRequest:
        if not isinstance(body, dict) or not isinstance(body.get("ports"), list):
            raise BadReachabilityRequest('want a JSON object {"ports": [TCP port, ...]}')
        ports = body["ports"]
        if not 1 <= len(ports) <= MAX_PORTS:
            raise BadReachabilityRequest(f"want 1 to {MAX_PORTS} ports, got {len(ports)}")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise BadReachabilityRequest(f"ports must be integers in 1..65535, got {ports!r}")
        return cls(tuple(dict.fromkeys(ports)))


class DialBack:
    """Runs dial-back checks with a bound on how many run at once (one per coordinator)."""

    def __init__(self, timeout: float = DIAL_TIMEOUT, max_concurrent: int = MAX_CONCURRENT_CHECKS):
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(max_concurrent)

    def check(self, address: str, request: ReachabilityRequest) -> dict:
        """``{"address": the caller's address, "reachable": {port: bool}}`` (ports as strings, JSON's keys)."""
        with self._slots, ThreadPoolExecutor(len(request.ports)) as pool:
            results = pool.map(lambda port: dial(address, port, self.timeout), request.ports)
            return {"address": address, "reachable": {str(p): ok for p, ok in zip(request.ports, results, strict=True)}}


def dial(address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``address:port`` opens within ``timeout`` seconds."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
