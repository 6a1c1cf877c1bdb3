"""Starting a peer's hivemind DHT: identity file, listen/announce addresses, relays, record validators.

Every failure a volunteer can cause here (bootstrap peers unreachable, identity file already used by a running
peer, bad multiaddr) becomes one ``UserError`` line instead of a traceback from the p2pd child.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import hivemind
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.auth import AuthorizerBase

from peer.config import PeerSettings
from peer.errors import UserError
from peer.lifetime import ProcessLock
from peer.swarm.overrides.dht_process import TolerantDHT

logger = logging.getLogger(__name__)


def lock_identity(identity_path: str) -> ProcessLock:
    """An exclusive lock next to the identity file, held for the peer's lifetime: two processes on one machine
    sharing an identity would fight over one peer id, and p2pd's own check only runs when it has bootstrap peers.
    The lock of a peer that was killed is taken over (``ProcessLock``), so the same command starts again."""
    path = Path(identity_path)
    if not path.parent.is_dir():
        raise UserError(f"directory for --identity_path does not exist: {path.parent}")
    what = f"identity file {path} is already in use by another running peer"
    return ProcessLock(path.with_name(path.name + ".lock"), what).acquire()


def start_dht(
    peer: PeerSettings,
    validators: Sequence[RecordValidatorBase] = (),
    startup_timeout: float = 60.0,
    authorizer: AuthorizerBase | None = None,
) -> hivemind.DHT:
    """Starts and returns a running DHT with this peer's network settings, joined to ``peer.initial_peers`` (a new
    swarm if there are none).

    ``authorizer`` (a private run's ``peer.swarm.authorizers.CoordinatorTokenAuthorizer``) signs every DHT request and
    response with this peer's token and refuses messages without a valid one; None for an open run.

    Raises UserError with one line for the causes users hit most: unreachable bootstrap peers, an identity in use.

    The DHT process survives a request whose sender exited before it was read (``TolerantDHT``).
    """
    kwargs: dict = dict(
        initial_peers=list(peer.initial_peers) or None,
        host_maddrs=list(peer.host_maddrs),
        announce_maddrs=list(peer.announce_maddrs) or None,
        client_mode=peer.client_mode,
        use_relay=peer.use_relay,
        use_auto_relay=peer.use_auto_relay,
        record_validators=list(validators),
        startup_timeout=startup_timeout,
        authorizer=authorizer,
        start=False,
    )
    if peer.identity_path:
        kwargs["identity_path"] = peer.identity_path
    try:
        dht = run_dht(lambda: TolerantDHT(**kwargs), startup_timeout + READY_GRACE_S)
    except UserError:
        raise
    except Exception as e:  # hivemind re-raises the p2pd child's error types; the message is what matters
        raise UserError(_explain_dht_failure(e, peer)) from None
    logger.info("DHT started, peer id %s", dht.peer_id)
    return dht


READY_GRACE_S = 30.0
"""Beyond ``startup_timeout`` (p2pd's own start-up and bootstrap): the DHT node's first lookups and the fork."""
READY_POLL_S = 0.5
STOP_GRACE_S = 15.0
START_ATTEMPTS = 3
"""DHT processes that died while starting are replaced this many times in all. A forked child can die of its
parent's state: CI saw one abort in gRPC's fork handler (abseil mutex check) when it forked p2pd, because the
parent served gRPC in-process while it forked. That is a race of the moment, so a fresh fork succeeds."""


class _DiedWhileStarting(Exception):
    pass


def run_dht(make_dht: Callable[[], hivemind.DHT], timeout: float, attempts: int = START_ATTEMPTS) -> hivemind.DHT:
    """Starts ``make_dht()`` (a DHT made with ``start=False``) and waits until it is ready: within ``timeout``
    per attempt, replacing a DHT process that died before it reported, at most ``attempts`` times in all. A DHT
    that fails is stopped (with its p2pd) before this returns or raises.

    hivemind's own wait (``start=True``) has no timeout and never returns when the DHT process dies before it
    reports (CI saw such a child abort at start-up and the caller hang until pytest killed it), so this polls:
    ready, failed (the child's exception is re-raised), dead (retried) or late (UserError).
    """
    for attempt in range(1, attempts + 1):
        dht = make_dht()
        dht.start()
        try:
            _wait_until_ready(dht, timeout)
            return dht
        except _DiedWhileStarting as e:
            _stop_child(dht)
            if attempt == attempts:
                raise UserError(f"{e} (tried {attempts} times); see the log above") from None
            logger.warning("%s; starting a new one (attempt %d of %d)", e, attempt + 1, attempts)
        except BaseException:
            _stop_child(dht)
            raise
    raise AssertionError("unreachable")


def _wait_until_ready(dht: hivemind.DHT, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            dht.wait_until_ready(timeout=READY_POLL_S)
            return
        except TimeoutError:
            pass
        if not dht.is_alive():
            raise _DiedWhileStarting(f"the DHT process died while starting (exit code {dht.exitcode})")
        if time.monotonic() > deadline:
            raise UserError(f"the DHT did not start within {timeout:.0f} s (p2pd start-up or the first lookups)")


def _stop_child(dht: hivemind.DHT) -> None:
    """A DHT that failed to start must not leave its process (and through it p2pd) behind. One that reported an
    error exits by itself: it is given time to, because a SIGTERM while it sends an update would leave hivemind's
    process-wide MPFuture lock taken forever (every later hivemind call of this process would hang). Only a child
    that is still alive after that (it hung) is terminated."""
    dht.join(STOP_GRACE_S)
    if dht.is_alive():
        logger.warning("the DHT process that failed to start did not exit; terminating it")
        dht.terminate()
        dht.join(STOP_GRACE_S)


def _explain_dht_failure(e: Exception, peer: PeerSettings) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    if "bootstrap" in text or "connect" in text.lower():
        peers = ", ".join(peer.initial_peers)
        return f"cannot reach any initial peer ({peers}): check the address, the port and the firewall ({text[:200]})"
    if "already taken" in text:
        return f"identity file {peer.identity_path} is already used by another peer in the swarm"
    if "multiaddr" in text.lower() or "invalid" in text.lower():
        return f"bad multiaddr in --initial_peers/--host_maddrs/--announce_maddrs: {text[:200]}"
    return f"could not start the DHT: {text[:300]}"


def visible_maddrs(dht: hivemind.DHT) -> list[str]:
    return [str(addr) for addr in dht.get_visible_maddrs()]
