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
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

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
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # also a dashboard display name (<= 64 characters)
HEADER = "# warmswarm allowlist: NAME<TAB>SHA256_OF_SECRET_HEX<TAB>ADDED_UTC (secrets are never stored)\n"

# reasons a token request is refused (labels of warmswarm_rejected_records_total)
NOT_ALLOWLISTED = "not_allowlisted"
BANNED = "banned"
REVOKED_KEY = "revoked_key"
MALFORMED = "malformed"
OVERSIZED = "oversized"
MAX_REQUEST_BYTES = 16 << 10
REVOCATION_EXPIRATION = 600.0  # seconds the <run_id>_revoked record lives unless republished


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class AllowlistEntry:
    name: str
    sha256: str
    added: str = ""


def parse_allowlist(text: str, source: str = "allowlist") -> dict[str, AllowlistEntry]:
    """Entries by name; UserError naming the first bad line."""
    entries: dict[str, AllowlistEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) not in (2, 3):
            raise UserError(f"{source} line {number}: expected NAME<TAB>SHA256[<TAB>ADDED], got {len(fields)} fields")
        name, digest = fields[0].strip(), fields[1].strip().lower()
        if not NAME_RE.fullmatch(name):
            raise UserError(f"{source} line {number}: bad volunteer name {name!r} (letters, digits, _.@- ; <= 64)")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise UserError(f"{source} line {number}: {name}'s key hash is not 64 hex digits")
        if name in entries:
            raise UserError(f"{source} line {number}: {name} is listed twice")
        entries[name] = AllowlistEntry(name, digest, fields[2].strip() if len(fields) == 3 else "")
    return entries


def format_allowlist(entries: dict[str, AllowlistEntry]) -> str:
    return HEADER + "".join(f"{e.name}\t{e.sha256}\t{e.added}\n" for e in entries.values())


class Allowlist:
    """The allowlist file, re-read when it changes on disk. ``check`` answers token requests."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(
                f"allowlist file not found: {self.path} (create it with `python -m coordinator allowlist add`)"
            )
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, AllowlistEntry] = {}
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> bool:
        """Re-reads the file; returns whether it changed. ``strict``: raise on a bad file instead of keeping the old
        list (at start, where there is no old list)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            entries = parse_allowlist(self.path.read_text(), str(self.path))
        except (OSError, UserError) as e:
            if strict:
                raise UserError(str(e)) from None
            logger.error("allowlist not reloaded, keeping the previous %d names: %s", len(self._entries), e)
            return False
        self._stamp, self._entries = stamp, entries
        logger.info("allowlist %s: %d volunteers", self.path, len(entries))
        return True

    def names(self) -> list[str]:
        self.reload()
        return sorted(self._entries)

    def grants(self) -> dict[str, str]:
        """Each listed name's grant: the hash of its secret (re-adding a name issues a new one)."""
        self.reload()
        return {name: entry.sha256 for name, entry in self._entries.items()}

    def check(self, name: str, secret: str) -> bool:
        """Whether ``name`` is listed with this secret (constant-time comparison of the hashes)."""
        self.reload()
        entry = self._entries.get(name)
        expected = entry.sha256 if entry is not None else secret_hash("")  # compare anyway: same time either way
        return hmac.compare_digest(expected, secret_hash(secret)) and entry is not None


# ---------------------------------------------------------------------------------------------------------------
# Editing the file (``python -m coordinator allowlist``)
# ---------------------------------------------------------------------------------------------------------------


def _read_entries(path: Path) -> dict[str, AllowlistEntry]:
    return parse_allowlist(path.read_text(), str(path)) if path.is_file() else {}


def _write_entries(path: Path, entries: dict[str, AllowlistEntry]) -> None:
    """Atomic replace, so a coordinator reading the file mid-write sees the old list or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(format_allowlist(entries))
    tmp.chmod(0o600)
    os.replace(tmp, path)


def add_volunteer(path: str | Path, name: str) -> str:
    """Adds ``name`` with a new random secret and returns the secret (the only time it exists in clear)."""
    path = Path(path)
    if not NAME_RE.fullmatch(name):
        raise UserError(f"bad volunteer name {name!r}: letters, digits and _.@- only, at most 64 characters")
    entries = _read_entries(path)
    if name in entries:
        raise UserError(f"{name} is already in {path}; remove it first to issue a new key")
    secret = secrets.token_urlsafe(32)
    added = datetime.now(UTC).replace(microsecond=0).isoformat()
    entries[name] = AllowlistEntry(name, secret_hash(secret), added)
    _write_entries(path, entries)
    return secret


def remove_volunteer(path: str | Path, name: str) -> None:
    path = Path(path)
    entries = _read_entries(path)
    if name not in entries:
        raise UserError(f"{name} is not in {path}")
    del entries[name]
    _write_entries(path, entries)


def list_volunteers(path: str | Path) -> list[AllowlistEntry]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"allowlist file not found: {path}")
    return list(_read_entries(path).values())


# ---------------------------------------------------------------------------------------------------------------
# Issuing tokens
# ---------------------------------------------------------------------------------------------------------------


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


REMOVED_REASON = "removed from the allowlist"
BANNED_REASON = "banned"


class IssuedKeys:
    """What the authority handed out, per volunteer: the keys it issued tokens to (``key_fingerprint``, hex) and the
    libp2p ids seen in their member records, each with the allowlist grant it was issued under, until when a token
    may still admit it, and whether it is revoked. One small SQLite file of its own (the store's tables are the
    monitor's); thread-safe (the HTTP handler records keys, the wait loop revokes)."""

    KEY, PEER = "key", "peer"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS issued (
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        name TEXT NOT NULL,
        grant_hash TEXT NOT NULL,
        expires REAL NOT NULL,
        revoked REAL,
        reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, kind, value)
    );
    """

    def __init__(self, path: str | Path, run_id: str):
        self.path, self.run_id = Path(path), run_id
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # as the store: durable commits without a sync each
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(self.SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"cannot open the issued-keys database {self.path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, kind: str, value: str, name: str, grant: str, expires: float) -> None:
        """Remembers ``value`` (a key fingerprint in hex, or a libp2p id) for ``name`` under ``grant``; a later token
        only pushes ``expires`` back. The first grant stays: a key issued under an old secret stays that secret's."""
        self.record_many(kind, [(value, name, grant, expires)])

    def record_many(self, kind: str, rows: list[tuple[str, str, str, float]]) -> None:
        """``record`` for many (value, name, grant, expires) in one transaction (the member ids of every pass)."""
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO issued (run_id, kind, value, name, grant_hash, expires) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, kind, value) DO UPDATE SET expires = MAX(expires, excluded.expires)",
                [(self.run_id, kind, value, name, grant, float(expires)) for value, name, grant, expires in rows],
            )

    def is_revoked(self, kind: str, value: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT revoked FROM issued WHERE run_id = ? AND kind = ? AND value = ?", (self.run_id, kind, value)
            ).fetchone()
        return row is not None and row[0] is not None

    def revoke_departed(self, grants: dict[str, str], banned: set[str], now: float | None = None) -> set[str]:
        """Revokes every entry whose volunteer is no longer listed under the grant it was issued with, or is banned;
        returns the names newly revoked."""
        now = time.time() if now is None else now
        with self._lock, self._db:
            rows = self._db.execute(
                "SELECT DISTINCT name, grant_hash FROM issued WHERE run_id = ? AND revoked IS NULL", (self.run_id,)
            ).fetchall()
            revoked = set()
            for name, grant in rows:
                if name in banned:
                    reason = BANNED_REASON
                elif grants.get(name) != grant:
                    reason = REMOVED_REASON
                else:
                    continue
                self._db.execute(
                    "UPDATE issued SET revoked = ?, reason = ? "
                    "WHERE run_id = ? AND name = ? AND grant_hash = ? AND revoked IS NULL",
                    (now, reason, self.run_id, name, grant),
                )
                revoked.add(name)
        return revoked

    def revoked(self, now: float) -> tuple[list[bytes], list[str]]:
        """(key fingerprints, libp2p ids) revoked and still able to matter: some token issued for them has not
        expired at ``now``. The published list holds only these, so it stays small."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, value FROM issued WHERE run_id = ? AND revoked IS NOT NULL AND expires > ? "
                "ORDER BY revoked DESC",
                (self.run_id, now),
            ).fetchall()
        keys = [bytes.fromhex(value) for kind, value in rows if kind == self.KEY]
        return keys, [value for kind, value in rows if kind == self.PEER]

    def entries(self) -> list[tuple[str, str, str, str]]:
        """(kind, value, name, reason or "") of every entry, for the operator and tests."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, value, name, reason FROM issued WHERE run_id = ? ORDER BY name, kind, value",
                (self.run_id,),
            ).fetchall()
        return [tuple(row) for row in rows]


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
