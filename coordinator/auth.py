"""The coordinator as the authority of a private run: the allowlist, and signed, expiring access tokens.

The allowlist is a small text file the organiser edits with ``python -m coordinator allowlist add|remove|list``
(or by hand). One volunteer per line, tab-separated::

    # warmswarm allowlist: NAME<TAB>SHA256_OF_SECRET_HEX<TAB>ADDED_UTC
    alice	3b1f...e0	2026-11-23T15:20:00+00:00

Only the sha256 of each secret is stored: the secret is 32 random bytes (256 bits), so a fast hash is as safe as a
slow KDF here and costs nothing per token request. The file is re-read whenever its mtime or size changes (and on
SIGHUP); a file that no longer parses keeps the last good list in force and logs the line at fault, so a typo made
mid-edit locks nobody out.

Tokens (``peer.run.tokens``) are signed with a persistent RSA key in the data dir, separate from the key that signs
the run's DHT records: that key only ever signs tokens (and the revocation list).

Removing or banning a volunteer takes effect within seconds, not when their tokens expire (``token_ttl``, default an
hour): the authority remembers, in ``issued_keys.sqlite`` in the data dir, every key it issued a token to and every
libp2p id seen in a member record, per volunteer and per allowlist grant (the secret's hash). On every monitor pass
(``PrivateRun.tick``) the entries of a volunteer no longer listed with that grant, or banned, are revoked for good:
the coordinator publishes them as ``<run_id>_revoked`` signed with the token key, every node's authorizer refuses
tokens bound to those keys, every gate stops admitting those peers, and the authority issues those keys no new
token (a re-added volunteer rejoins with a fresh peer process, hence a fresh key).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.allowlist import NAME_RE, Allowlist
from coordinator.issued_keys import IssuedKeys
from coordinator.signing_key import load_or_create_signing_key
from peer.errors import UserError

if TYPE_CHECKING:  # hivemind costs seconds to import; `allowlist add|remove|list` must not wait for it
    import hivemind
    from hivemind.proto.auth_pb2 import AccessToken
    from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

    from coordinator.store import Store
    from peer.swarm.authorizers import LocalTokenAuthorizer

logger = logging.getLogger(__name__)

AUTHORITY_KEY_NAME = "token_authority_key.der"
ISSUED_KEYS_NAME = "issued_keys.sqlite"
DEFAULT_TOKEN_TTL = 3600.0

# reasons a token request is refused (labels of warmswarm_rejected_records_total)
NOT_ALLOWLISTED = "not_allowlisted"
BANNED = "banned"
REVOKED_KEY = "revoked_key"
MALFORMED = "malformed"
OVERSIZED = "oversized"
MAX_REQUEST_BYTES = 16 << 10
REVOCATION_EXPIRATION = 600.0  # seconds the <run_id>_revoked record lives unless republished


class TokenIssueRefused(Exception):
    """A token request the authority turns down; ``reason`` is the metric label, the message one line for the user."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def store_banned_names(store) -> Callable[[], set[str]]:
    """The names the coordinator has banned (``Store.banned_names``, added with robust averaging); an empty set
    from a store that does not track bans."""
    banned = getattr(store, "banned_names", None)
    return (lambda: set(banned())) if callable(banned) else set


@dataclass
class TokenAuthority:
    """Signs access tokens for ``run_id`` with ``key``, for allowlisted and not banned volunteers only, and (given
    ``issued``) never for a revoked key; every key it signs for is recorded there."""

    run_id: str
    key: RSAPrivateKey
    allowlist: Allowlist
    banned_names: Callable[[], set[str]] = set
    ttl: float = DEFAULT_TOKEN_TTL
    issued: IssuedKeys | None = None

    COORDINATOR_NAME = "coordinator"  # the username in the coordinator's own token

    @property
    def public_key(self) -> RSAPublicKey:
        return self.key.get_public_key()

    def public_key_text(self) -> str:
        return self.public_key.to_bytes().decode()

    def issue_token(self, name: str, secret: str, public_key: bytes, ttl: float | None = None) -> AccessToken:
        """A token for volunteer ``name`` holding ``public_key`` (OpenSSH bytes); TokenIssueRefused otherwise."""
        from hivemind.utils.crypto import RSAPublicKey

        if not isinstance(name, str) or not isinstance(secret, str) or not NAME_RE.fullmatch(name):
            raise TokenIssueRefused(MALFORMED, "a token request needs a volunteer name and key")
        try:
            RSAPublicKey.from_bytes(public_key)
        except Exception:
            raise TokenIssueRefused(MALFORMED, "public_key is not an RSA public key in OpenSSH form") from None
        if not self.allowlist.check(name, secret):
            raise TokenIssueRefused(
                NOT_ALLOWLISTED,
                f"volunteer {name!r} with this key is not in the allowlist of run {self.run_id!r}: "
                "check --auth_key, or ask the organiser",
            )
        if name in self.banned_names():
            raise TokenIssueRefused(BANNED, f"volunteer {name!r} is banned from run {self.run_id!r}")
        if self.issued is None:
            return self.sign(name, public_key, ttl)
        from peer.run.tokens import key_fingerprint, token_expires_at

        fingerprint = key_fingerprint(public_key).hex()
        if self.issued.is_revoked(IssuedKeys.KEY, fingerprint):
            raise TokenIssueRefused(
                REVOKED_KEY,
                f"this peer's key was revoked in run {self.run_id!r}: restart the peer to join with a new key",
            )
        token = self.sign(name, public_key, ttl)
        grant = self.allowlist.grants().get(name, "")
        self.issued.record(IssuedKeys.KEY, fingerprint, name, grant, token_expires_at(token))
        return token

    def sign(self, name: str, public_key: bytes, ttl: float | None = None) -> AccessToken:
        """A token without the allowlist check: for the coordinator's own DHT node."""
        from hivemind.utils import get_dht_time

        from peer.run.tokens import sign_token

        return sign_token(self.key, self.run_id, name, public_key, get_dht_time() + (ttl or self.ttl))


class RejectionFeed:
    """Turns cumulative refusal counts read from somewhere (the DHT process's authorizer) into increments for the
    store, whose totals survive restarts."""

    def __init__(self, read: Callable[[], dict[str, int]], add: Callable[[dict[str, int]], None]):
        self.read, self.add = read, add
        self._seen: dict[str, int] = {}

    def poll(self) -> dict[str, int]:
        totals = self.read()
        new = {reason: n - self._seen.get(reason, 0) for reason, n in totals.items()}
        new = {reason: n for reason, n in new.items() if n > 0}
        self._seen = dict(totals)
        if new:
            self.add(new)
        return new


def token_response(authority: TokenAuthority | None, run_id: str, body: bytes | None) -> tuple[int, dict, str | None]:
    """The answer to ``POST /api/v1/auth/token`` with raw ``body`` (None: too large to read): (HTTP status, JSON
    payload, the refusal reason to count or None). Kept apart from the web framework so its rules are testable."""
    if authority is None:
        return 404, {"detail": f"run {run_id!r} is open: it needs no access token"}, None
    if body is None or len(body) > MAX_REQUEST_BYTES:
        return 413, {"detail": f"a token request must be under {MAX_REQUEST_BYTES} bytes"}, OVERSIZED
    try:
        request = json.loads(body)
        name, secret, public_key = request["name"], request["key"], request["public_key"]
        public_key = base64.b64decode(public_key, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return 400, {"detail": "a token request is JSON {name, key, public_key (base64 of the OpenSSH key)}"}, MALFORMED
    from peer.run.tokens import token_to_text

    try:
        token = authority.issue_token(name, secret, public_key)
    except TokenIssueRefused as e:
        logger.warning("token refused (%s): %s", e.reason, e)
        return (400 if e.reason == MALFORMED else 403), {"detail": str(e)}, e.reason
    logger.info("access token issued to %s until %s", name, token.expiration_time)
    return (
        200,
        {
            "token": token_to_text(token),
            "expiration_time": token.expiration_time,
            "authority_public_key": authority.public_key_text(),
        },
        None,
    )


@dataclass
class PrivateRun:
    """What a private run adds to a coordinator: the token authority (allowlist + key), the DHT authorizer and
    member record of the coordinator's own node, the revocation of removed or banned volunteers, and the feed of the
    DHT's token refusals into the store."""

    authority: TokenAuthority
    store: Store
    member_refresh_every: float = 300.0
    _dht: hivemind.DHT | None = None
    _signing_key: RSAPrivateKey | None = None
    _feed: RejectionFeed | None = None
    _next_member_refresh: float = 0.0
    _member_names: dict[str, str] = field(default_factory=dict)  # libp2p peer id (base58) -> allowlisted name
    revocation_refresh: float = 60.0  # republish the revocation list this often (its record lives 10 minutes)
    _revocations_published: tuple = ()
    _revocations_at: float = -1e9

    @classmethod
    def open(cls, run_id: str, allowlist: str | Path, data_dir: Path, store: Store, ttl: float) -> PrivateRun:
        """Reads the allowlist (UserError if it is missing or bad) and loads or creates the token-signing key."""
        if ttl < 60:
            raise UserError(f"--token_ttl must be at least 60 seconds, got {ttl:g}")
        key = load_or_create_signing_key(Path(data_dir) / AUTHORITY_KEY_NAME)
        issued = IssuedKeys(Path(data_dir) / ISSUED_KEYS_NAME, run_id)
        authority = TokenAuthority(run_id, key, Allowlist(allowlist), store_banned_names(store), ttl, issued)
        private = cls(authority, store, member_refresh_every=min(300.0, ttl / 4))
        authority.banned_names = private.banned_names
        return private

    def banned_names(self) -> set[str]:
        """Allowlisted names of banned peers. Bans are by libp2p peer id; the name comes from the token in that
        peer's member record (what the volunteer authenticated as), not from the display name it chose, which it
        could change to dodge the ban. Names the store knows are included too."""
        names = store_banned_names(self.store)()
        banned_ids = {row.peer_id for row in self.store.bans()} if hasattr(self.store, "bans") else set()
        if banned_ids:
            names |= {name for peer_id, name in self._member_names.items() if peer_id in banned_ids}
        return names

    def validators(self) -> list:
        from peer.run.members import member_validators

        return member_validators(self.authority.run_id)

    def authorizer(self, signing_key: RSAPrivateKey) -> LocalTokenAuthorizer:
        """The coordinator DHT's authorizer: it signs its own token (bound to ``signing_key``, the key of the
        coordinator's records, its member record included)."""
        from peer.swarm.authorizers import LocalTokenAuthorizer

        authority = self.authority
        return LocalTokenAuthorizer(
            authority.run_id,
            authority.public_key,
            signing_key,
            lambda key: authority.sign(authority.COORDINATOR_NAME, key),
        )

    def attach(self, dht: hivemind.DHT, signing_key: RSAPrivateKey) -> None:
        from peer.swarm.authorizers import dht_auth_rejections, follow_revocations

        self._dht, self._signing_key = dht, signing_key
        self._feed = RejectionFeed(lambda: dht_auth_rejections(dht), self.store.add_rejected)
        follow_revocations(dht)  # our own node refuses revoked keys too, from the list we publish
        self.publish_member_record()

    def publish_member_record(self) -> bool:
        """Our own member record: the coordinator's state pulls (its client averager shares the DHT's peer id) are
        refused by every peer's ``MembershipGate`` without it."""
        from peer.run.members import publish_member_record
        from peer.run.tokens import owner_subkey

        assert self._dht is not None and self._signing_key is not None, "attach() first"
        public_key = self._signing_key.get_public_key().to_bytes()
        token = self.authority.sign(self.authority.COORDINATOR_NAME, public_key)
        signer = owner_subkey(public_key)
        self._next_member_refresh = time.monotonic() + self.member_refresh_every
        ok = publish_member_record(self._dht, self.authority.run_id, signer, token)
        if not ok:
            logger.warning("the DHT did not accept the coordinator's member record; will retry")
        return ok

    def tick(self) -> None:
        """Called every monitor interval: renews the member record when due, revokes the volunteers removed from the
        allowlist or banned and publishes the revocations, moves new token refusals to the store."""
        if time.monotonic() >= self._next_member_refresh:
            self.publish_member_record()
        self._member_names = self.read_member_names()
        self.revoke()
        if self._feed is not None:
            self._feed.poll()

    def read_member_names(self) -> dict[str, str]:
        """Who runs which libp2p peer id, from the valid member records in the DHT; each is remembered in
        ``issued`` under its volunteer's current grant, so that a revocation covers the peer id too."""
        from peer.run.members import fetch_member_entries, valid_members
        from peer.run.tokens import token_expires_at

        assert self._dht is not None, "attach() first"
        entries = fetch_member_entries(self._dht, self.authority.run_id)
        members = list(valid_members(entries, self.authority.run_id, self.authority.public_key))
        issued, grants = self.authority.issued, self.authority.allowlist.grants()
        if issued is not None:
            rows = [
                (peer_id.to_base58(), token.username, grants[token.username], token_expires_at(token))
                for peer_id, token in members
                if token.username in grants
            ]
            issued.record_many(IssuedKeys.PEER, rows)
        return {peer_id.to_base58(): token.username for peer_id, token in members}

    def revoke(self) -> set[str]:
        """Revokes what was issued to volunteers no longer allowlisted under the same grant, or banned, and keeps
        ``<run_id>_revoked`` published (at once on a change, else every ``revocation_refresh`` seconds). Returns the
        names revoked in this pass."""
        issued = self.authority.issued
        if issued is None:
            return set()
        names = issued.revoke_departed(self.authority.allowlist.grants(), self.banned_names())
        for name in sorted(names):
            logger.warning(
                "revoked the access of %s in run %s: its tokens are refused from now on", name, self.authority.run_id
            )
        self.publish_revocations()
        return names

    def publish_revocations(self) -> bool:
        from hivemind.utils import get_dht_time

        from peer.run.revocations import revocations_key, sign_revocations
        from peer.run.tokens import owner_subkey

        keys, peer_ids = self.authority.issued.revoked(now=get_dht_time())
        listed = (tuple(sorted(keys)), tuple(sorted(peer_ids)))
        due = time.monotonic() - self._revocations_at > self.revocation_refresh
        if not (keys or peer_ids) or (listed == self._revocations_published and not due):
            return False
        assert self._dht is not None and self._signing_key is not None, "attach() first"
        value = sign_revocations(self.authority.key, self.authority.run_id, keys, peer_ids)
        subkey = owner_subkey(self._signing_key.get_public_key().to_bytes())
        ok = self._dht.store(
            revocations_key(self.authority.run_id), value, get_dht_time() + REVOCATION_EXPIRATION, subkey=subkey
        )
        if ok:
            self._revocations_published, self._revocations_at = listed, time.monotonic()
        else:
            logger.warning("the DHT did not accept the revocation list; retrying next pass")
        return bool(ok)

    def run_info_auth(self) -> dict:
        """The ``auth`` section of ``GET /api/v1/run``."""
        return {"required": True, "authority_public_key": self.authority.public_key_text()}
