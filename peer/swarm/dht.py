"""Starting a peer's hivemind DHT: identity file, listen/announce addresses, relays, record validators.

Every failure a volunteer can cause here (bootstrap peers unreachable, identity file already used by a running
peer, bad multiaddr) becomes one ``UserError`` line instead of a traceback from the p2pd child.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import hivemind
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.auth import AuthorizerBase

from peer.config import SwarmSpec
from peer.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class IdentityLock:
    """An exclusive lock next to the identity file, held for the peer's lifetime: two processes on one machine
    sharing an identity would fight over one peer id, and p2pd's own check only runs when it has bootstrap peers."""

    path: Path
    handle: IO[bytes]

    def release(self) -> None:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        finally:
            self.handle.close()


def lock_identity(identity_path: str) -> IdentityLock:
    path = Path(identity_path)
    if not path.parent.is_dir():
        raise UserError(f"directory for --identity_path does not exist: {path.parent}")
    lock_path = path.with_name(path.name + ".lock")
    handle = open(lock_path, "ab")  # noqa: SIM115 - held open for the peer's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"identity file {path} is already in use by another running peer") from None
    return IdentityLock(lock_path, handle)


def start_dht(
    spec: SwarmSpec,
    validators: Sequence[RecordValidatorBase] = (),
    startup_timeout: float = 60.0,
    authorizer: AuthorizerBase | None = None,
) -> hivemind.DHT:
    """Starts and returns a running DHT joined to ``spec.initial_peers`` (a new swarm if there are none).

    ``authorizer`` (a private run's ``peer.swarm.auth.CoordinatorTokenAuthorizer``) signs every DHT request and
    response with this peer's token and refuses messages without a valid one; None for an open run.

    Raises UserError with one line for the causes users hit most: unreachable bootstrap peers, an identity in use.
    """
    kwargs: dict = dict(
        initial_peers=list(spec.initial_peers) or None,
        host_maddrs=list(spec.host_maddrs),
        announce_maddrs=list(spec.announce_maddrs) or None,
        client_mode=spec.client_mode,
        use_relay=spec.use_relay,
        use_auto_relay=spec.use_auto_relay,
        record_validators=list(validators),
        startup_timeout=startup_timeout,
        authorizer=authorizer,
        start=True,
    )
    if spec.identity_path:
        kwargs["identity_path"] = spec.identity_path
    try:
        dht = hivemind.DHT(**kwargs)
    except Exception as e:  # hivemind re-raises the p2pd child's error types; the message is what matters
        raise UserError(_explain_dht_failure(e, spec)) from None
    logger.info("DHT started, peer id %s", dht.peer_id)
    return dht


def _explain_dht_failure(e: Exception, spec: SwarmSpec) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if "bootstrap" in text or "connect" in text.lower():
        peers = ", ".join(spec.initial_peers)
        return f"cannot reach any initial peer ({peers}): check the address, the port and the firewall ({text[:200]})"
    if "already taken" in text:
        return f"identity file {spec.identity_path} is already used by another peer in the swarm"
    if "multiaddr" in text.lower() or "invalid" in text.lower():
        return f"bad multiaddr in --initial_peers/--host_maddrs/--announce_maddrs: {text[:200]}"
    return f"could not start the DHT: {text[:300]}"


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    return [str(addr) for addr in dht.get_visible_maddrs()]
