"""What ``coordinator start`` checks before it writes anything or starts anything slow.

Growing checkpoint 0 can take a minute and hundreds of MB; a busy port or an unusable ``--data_dir`` found only
after it (when the servers bind) would cost that time and leave a data dir behind. These checks write nothing and
import nothing heavy, so the CLI runs them before it even imports hivemind and torch, and ``start_coordinator``
runs them again for callers that use it directly.

A port is probed by binding it the way the servers will (``SO_REUSEADDR``, so a port left in TIME_WAIT by a
coordinator that just stopped still counts as free); a port held by a listener — whether or not it set
``SO_REUSEPORT``, as gRPC and libp2p do — refuses the bind. The probe is released at once, so a port taken between
the check and the real bind is still reported, only later.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping
from pathlib import Path

from peer.errors import UserError
from peer.run.writable_dir import check_writable_dir


def _probe(host: str, port: int) -> None:
    """Binds ``host:port`` for a moment; raises OSError if a server could not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))


def check_listen_ports(host: str, ports: Mapping[str, int]) -> None:
    """Every server can listen on ``host`` at its port (``ports``: flag -> port, 0 = any free port)."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if not 0 <= port <= 65535:
            raise UserError(f"{flag} must be a port number from 0 to 65535 (0: any free port), got {port}")
        if port and port in seen:
            raise UserError(f"{flag} {port} is also the {seen[port]}: each server needs its own port")
        seen.setdefault(port, flag)
    try:
        _probe(host, 0)
    except OSError as e:
        why = "it is not an address of this machine" if e.errno == errno.EADDRNOTAVAIL else str(e)
        raise UserError(f"--host {host}: cannot listen there ({why})") from None
    for flag, port in ports.items():
        if not port:
            continue
        try:
            _probe(host, port)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise UserError(
                    f"{flag} {port} is in use on {host} (another coordinator or service?): stop it or choose "
                    f"another port"
                ) from None
            raise UserError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror or e})") from None


def refuse_early(data_dir: Path, host: str, ports: Mapping[str, int]) -> None:
    """Both checks; UserError (one line) on the first problem, with nothing written."""
    check_writable_dir(data_dir, "--data_dir")
    check_listen_ports(host, ports)
