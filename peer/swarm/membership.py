"""A private run's peer at run time: its token at join, its member record kept fresh, and the averaging gate.

A volunteer proves it is on the allowlist once, over HTTP (``authenticate``, before its DHT starts), then publishes
its member record (``peer.run.members``) and keeps it fresh with a renewed token (``MemberRecordKeeper``).
``MembershipGate`` admits a libp2p peer id into averaging only while a valid record names it, and drops revoked keys
and peer ids (``peer.run.revocations``) at its next refresh. If the coordinator refuses to renew the token (the
volunteer was removed or banned), the peer is told so it can leave.

Why in ``peer.swarm``: these run inside a peer (threads beside its DHT and averagers); the records and tokens they
handle are the run's contract in ``peer.run``.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

import hivemind
from hivemind.p2p import PeerID
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.config import PeerSettings
from peer.errors import UserError
from peer.run.members import fetch_member_entries, member_validators, members_key, publish_member_record, read_members
from peer.run.revocations import Revoked, fetch_revocations
from peer.run.tokens import (
    AUTH_KEY_ENV,
    Credentials,
    TokenRequestRefused,
    owner_subkey,
    public_key_from_text,
    request_token,
    token_expires_at,
    token_problem,
)
from peer.swarm.authorizers import CoordinatorTokenAuthorizer, follow_revocations
from peer.swarm.metrics import RecordSigning

logger = logging.getLogger(__name__)


class MembershipGate:
    """A ``peer.swarm.gate.PeerGate``: admits a libp2p peer id into averaging only while ``<run_id>_members``
    holds a valid member record naming it, whose key and peer id the authority has not revoked.

    It never waits on the DHT: averagers ask it inside their event loop on every request. A background thread keeps a
    table of admitted peers (a full read of the key every ``refresh_every`` seconds, and at most every
    ``miss_refresh_after`` seconds when asked about an unknown peer); a peer not in the table yet is refused now and
    admitted on its retry, which hivemind's matchmaking and state download do by themselves. hivemind runs averagers
    in forked processes, where the parent's threads do not exist: each process starts its own thread on first use."""

    def __init__(
        self,
        dht: hivemind.DHT,
        run_id: str,
        authority: RSAPublicKey,
        refresh_every: float = 15.0,
        miss_refresh_after: float = 1.0,
    ):
        self.dht, self.run_id, self.authority = dht, run_id, authority
        self.refresh_every, self.miss_refresh_after = refresh_every, miss_refresh_after
        self._members: dict[PeerID, float] = {}
        self._revoked = Revoked()
        self._pid: int | None = None
        self._wake = threading.Event()
        self._closed = threading.Event()

    def admits(self, peer_id: PeerID) -> bool:
        self._ensure_refresher()
        if self.is_member(peer_id):
            return True
        self._wake.set()
        return False

    def is_member(self, peer_id: PeerID) -> bool:
        """Whether the table (as last read) admits ``peer_id`` now; no side effects."""
        return self._members.get(peer_id, 0.0) > get_dht_time()

    def why_not(self, peer_id: PeerID) -> str:
        if self.admits(peer_id):
            return ""
        if peer_id.to_base58() in self._revoked.peer_ids:
            return f"peer {peer_id} was revoked by the coordinator of run {self.run_id!r} (removed or banned)"
        return (
            f"peer {peer_id} has no valid member record in {members_key(self.run_id)} "
            "(not allowlisted, revoked, token expired, or its record is not visible here yet)"
        )

    def refresh(self) -> int:
        """Re-reads the member records now (blocking: call it from a thread, never from an event loop); returns how
        many peers are admitted. Revocations are read first, so a member record never outlives its revocation."""
        self._revoked = self._revoked | fetch_revocations(self.dht, self.run_id, self.authority)
        entries = fetch_member_entries(self.dht, self.run_id)
        self._members = read_members(entries, self.run_id, self.authority, revoked=self._revoked)
        return len(self._members)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    def _ensure_refresher(self) -> None:
        if self._pid == os.getpid():
            return
        # first use in this process (or a forked child): fresh primitives, the parent's may be in any state
        self._pid = os.getpid()
        self._wake, self._closed = threading.Event(), threading.Event()
        threading.Thread(target=self._refresh_forever, name="membership-gate", daemon=True).start()

    def _refresh_forever(self) -> None:
        wake, closed = self._wake, self._closed
        while not closed.is_set():
            try:
                self.refresh()
            except Exception as e:  # a DHT hiccup must not end the thread; the table stays as it was
                logger.debug("member records could not be read: %s", e)
            closed.wait(self.miss_refresh_after)  # rate limit for refreshes triggered by unknown peers
            wake.wait(self.refresh_every)
            wake.clear()


# ---------------------------------------------------------------------------------------------------------------
# A peer's side: get the token at join, keep the member record fresh
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PeerAuth:
    """What a private run's peer holds: its credentials, the authority's key and its current token."""

    run_id: str
    coordinator_url: str
    credentials: Credentials
    authority: RSAPublicKey
    private_key: RSAPrivateKey
    token: AccessToken

    def authorizer(self) -> CoordinatorTokenAuthorizer:
        return CoordinatorTokenAuthorizer(
            self.run_id, self.authority, self.private_key, self.coordinator_url, self.credentials, self.token
        )

    def gate(self, dht: hivemind.DHT) -> MembershipGate:
        return MembershipGate(dht, self.run_id, self.authority)


def authenticate(
    run_id: str,
    coordinator_url: str | None,
    auth_key: str | None,
    authority_public_key: str | None,
    private_key: RSAPrivateKey,
    timeout: float = 30.0,
) -> PeerAuth | None:
    """Gets this peer's first token (before its DHT starts, so a refused volunteer fails at once with one line);
    None for an open run (no authority key). UserError when the run is private and the token is refused."""
    if not authority_public_key:
        return None
    try:
        authority = public_key_from_text(authority_public_key)
    except ValueError as e:
        raise UserError(f"bad authority_public_key for run {run_id!r}: {e}") from None
    if not auth_key:
        raise UserError(
            f"run {run_id!r} is private: join with --auth_key NAME:SECRET (or env {AUTH_KEY_ENV}) from its organiser"
        )
    if not coordinator_url:
        raise UserError(f"run {run_id!r} is private: join with --coordinator URL to get an access token")
    credentials = Credentials.parse(auth_key)
    token = request_token(coordinator_url, credentials, private_key.get_public_key(), timeout)
    problem = token_problem(token, authority, run_id)
    if problem is not None:
        raise UserError(f"the coordinator's access token does not verify with the run's authority key ({problem})")
    return PeerAuth(run_id, coordinator_url, credentials, authority, private_key, token)


@dataclass
class Membership:
    """A private run's peer once in the DHT: its member record kept fresh, and the gate for its averagers."""

    keeper: MemberRecordKeeper
    gate: MembershipGate

    def stop(self) -> None:
        self.keeper.stop()
        self.gate.close()


def authenticate_peer(run_id: str, peer: PeerSettings, signing: RecordSigning) -> PrivatePeer | None:
    """Join step one of a private run (None for an open run): get a token from ``peer.coordinator_url`` for the key
    that signs this peer's records, and add the member-record schema to its validators. Must run before the DHT
    starts."""
    private_key = RSAPrivateKey.process_wide()  # hivemind's default signer: the one ``signing`` was built with
    if owner_subkey(private_key.get_public_key().to_bytes()) != signing.public_key:
        raise RuntimeError("the record signer is not the process-wide key; the token would be bound to another key")
    auth = authenticate(run_id, peer.coordinator_url, peer.auth_key, peer.authority_public_key, private_key)
    if auth is None:
        return None
    ensure_identity(peer)
    signing.validators.extend(member_validators(run_id))
    logger.info("access token for %s until %s", auth.credentials.name, auth.token.expiration_time)
    return PrivatePeer(auth, signing.public_key)


def ensure_identity(peer: PeerSettings) -> str:
    """A private run's peer proves its libp2p id with the identity file's key, so it needs one: without
    ``--identity_path``, a fresh path in a private temporary folder (removed at exit), where p2pd's start writes a new
    identity (a new peer id, as without a file)."""
    if not peer.identity_path:
        folder = tempfile.mkdtemp(prefix="warmswarm-identity-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        peer.identity_path = os.path.join(folder, "identity.key")
    return peer.identity_path


@dataclass
class PrivatePeer:
    """What ``authenticate_peer`` hands the session: the DHT authorizer to start with, then ``join``."""

    auth: PeerAuth
    signer_public_key: bytes

    def authorizer(self) -> CoordinatorTokenAuthorizer:
        return self.auth.authorizer()

    def join(self, dht: hivemind.DHT, on_revoked: Callable[[str], None] | None = None) -> Membership:
        """Publishes the member record (then keeps it fresh) and returns the membership with its gate."""
        keeper = MemberRecordKeeper(dht, self.auth, self.signer_public_key, on_revoked=on_revoked)
        if not keeper.publish():
            logger.warning("the DHT did not take this peer's member record yet; retrying in the background")
        if not follow_revocations(dht):
            logger.warning("this peer's DHT has no run authorizer: revoked volunteers are refused only by the gate")
        gate = self.auth.gate(dht)
        # read the table once here: the averagers fork from this process and start with a copy of it, so the
        # coordinator and the peers already in the run are admitted from their first request
        logger.info("%d members of run %s admitted to averaging so far", gate.refresh(), self.auth.run_id)
        return Membership(keeper.start(), gate)


def allowlisted_name(auth_key: str | None) -> str:
    """The volunteer name in an ``--auth_key NAME:SECRET`` ("" without one): the default dashboard name."""
    name, sep, _ = (auth_key or "").partition(":")
    return name.strip() if sep else ""


class MemberRecordKeeper:
    """Keeps a peer's member record in the DHT: republished every ``every`` seconds (records are lost when the nodes
    holding them leave), with a fresh token once a quarter of the current one's lifetime is left.

    If the coordinator refuses to renew (the volunteer was removed or banned), ``on_revoked`` is called once with the
    reason, so the peer can leave instead of training unheard until its token runs out."""

    def __init__(
        self,
        dht: hivemind.DHT,
        auth: PeerAuth,
        signer_public_key: bytes,
        every: float = 60.0,
        on_revoked: Callable[[str], None] | None = None,
    ):
        self.dht, self.auth, self.signer_public_key = dht, auth, signer_public_key
        self.every = every
        self.on_revoked = on_revoked
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lifetime = token_expires_at(auth.token) - get_dht_time()

    def publish(self) -> bool:
        return publish_member_record(self.dht, self.auth.run_id, self.signer_public_key, self.auth.token)

    def start(self) -> MemberRecordKeeper:
        self._thread = threading.Thread(target=self._run, name="member-record", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        interval = max(1.0, min(self.every, self._lifetime / 4))
        while not self._stop.wait(interval):
            try:
                if token_expires_at(self.auth.token) - get_dht_time() < self._lifetime / 4:
                    self.auth.token = request_token(
                        self.auth.coordinator_url, self.auth.credentials, self.auth.private_key.get_public_key()
                    )
                self.publish()
            except TokenRequestRefused as e:
                logger.error("the coordinator refused to renew this peer's access token: %s", e)
                if self.on_revoked is not None:
                    self.on_revoked(str(e))
                return
            except UserError as e:  # coordinator unreachable for now: the current token is still good for a while
                logger.warning("access token not renewed yet: %s", e)
            except Exception:
                logger.exception("could not refresh the member record; will retry")
