"""Private runs: coordinator-signed, expiring access tokens, checked on every DHT call and before every averaging.

The coordinator is the authority (``coordinator.auth``). A volunteer proves it is on the allowlist once, over HTTP,
and gets an ``AccessToken`` (hivemind's protobuf) naming it, bound to its RSA public key and expiring. From then on:

- **DHT**: ``CoordinatorTokenAuthorizer`` is hivemind's ``TokenAuthorizerBase``; every DHT request and response
  carries the sender's token and is signed with the key the token names, so a node without a valid token can neither
  read nor write records through us (hivemind's ``AuthRPCWrapper`` drops what ``validate_request`` refuses).
- **Averaging**: hivemind's averagers take no authorizer, so each peer publishes a *member record* under
  ``<run_id>_members`` (subkey = its RSA public key, signed; value = {libp2p peer id, token, proof}) and
  ``MembershipGate`` admits a libp2p peer id into averaging only while a valid record names it.
- **Who runs which libp2p id**: a member record names a libp2p peer id, so it also carries a signature of (run_id,
  record key) by that peer id's own identity key (the RSA key in the ``--identity_path`` file p2pd runs with; a
  private run's peer without one gets a fresh file, ``ensure_identity``). A member can therefore admit only the
  libp2p peer it really runs, not vouch for another one.
- **Revocation**: when the organiser removes a volunteer (or the coordinator bans one), the coordinator publishes
  ``<run_id>_revoked``: the keys it issued that volunteer tokens for and the libp2p ids seen in their member records,
  signed by the authority key. Every node's authorizer follows it (``follow_revocations``, every few seconds, inside
  the DHT process) and refuses tokens bound to a revoked key; ``MembershipGate`` drops revoked keys and peer ids at
  its next refresh. So a removal takes effect in seconds, not when the token expires.

A token is valid when the authority's signature covers (run_id, username, public key, expiration) and it has not
expired; the run_id inside the signed bytes keeps a token of one run from opening another run with the same
coordinator key. What is refused is counted by reason (``REASONS``), so peers log it and the coordinator's
``warmswarm_rejected_records_total{reason}`` shows it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import hivemind
import httpx
import pydantic.v1 as pydantic
from cryptography.hazmat.primitives import serialization
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.auth import AuthorizedRequestBase, AuthorizedResponseBase, TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.config import RunConfig
from peer.errors import UserError
from peer.swarm.metrics import RecordSigning

logger = logging.getLogger(__name__)

AUTH_KEY_ENV = "WARMSWARM_AUTH_KEY"
TOKEN_PATH = "/api/v1/auth/token"
TOKEN_DOMAIN = b"warmswarm-access-token-v1"
MAX_TOKEN_BYTES = 4096  # a real token is ~800 bytes (2048-bit key + signature); anything far larger is junk

# Why a token or a signed request was refused (the label of warmswarm_rejected_records_total).
MISSING_TOKEN = "missing_token"  # a request without any token: a node of an open run, or not configured
BAD_TOKEN = "bad_token"  # not signed by this run's authority (forged, tampered, another run), or unparsable
EXPIRED_TOKEN = "expired_token"
WRONG_KEY = "wrong_key"  # a valid token presented by someone who does not hold the key it is bound to
REPLAYED = "replayed_request"  # a correctly signed request replayed, or from a clock more than a minute off
REVOKED = "revoked_token"  # a valid token bound to a key the coordinator revoked (volunteer removed or banned)
REASONS = (MISSING_TOKEN, BAD_TOKEN, EXPIRED_TOKEN, WRONG_KEY, REPLAYED, REVOKED)

REVOCATION_DOMAIN = b"warmswarm-revocations-v1"
PEER_PROOF_DOMAIN = b"warmswarm-member-peer-id-v1"
MAX_REVOKED = 512  # per list (keys, peer ids): 16 KB + 24 KB, under the DHT record limit; tokens expire anyway
REVOCATIONS_EVERY = 5.0  # seconds between two reads of <run_id>_revoked by a node's authorizer


def members_key(run_id: str) -> str:
    return f"{run_id}_members"


def revocations_key(run_id: str) -> str:
    return f"{run_id}_revoked"


def key_fingerprint(public_key: bytes) -> bytes:
    """How revocations name a token's key: sha256 of its OpenSSH bytes (32 bytes instead of ~400)."""
    return hashlib.sha256(public_key).digest()


def owner_subkey(public_key: bytes) -> bytes:
    """The DHT subkey form of an RSA public key (``[owner:<ssh-rsa ...>]``), as ``RSASignatureValidator`` signs it."""
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", public_key)


# ---------------------------------------------------------------------------------------------------------------
# Tokens: signing (the authority) and checking (everyone)
# ---------------------------------------------------------------------------------------------------------------


def _signed_bytes(run_id: str, username: str, public_key: bytes, expiration_time: str) -> bytes:
    """The exact bytes the authority signs: msgpack of a list, so no field can bleed into the next."""
    return MSGPackSerializer.dumps([TOKEN_DOMAIN, run_id, username, public_key, expiration_time])


def format_expiration(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat()


def parse_expiration(text: str) -> float:
    """Unix time of an ``expiration_time`` field; ValueError if it is not an ISO-8601 time with a zone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"expiration time {text!r} has no time zone")
    return moment.timestamp()


def sign_token(
    authority_key: RSAPrivateKey, run_id: str, username: str, public_key: bytes, expires_at: float
) -> AccessToken:
    """A token for ``username`` holding ``public_key`` (OpenSSH bytes), valid in ``run_id`` until ``expires_at``."""
    expiration_time = format_expiration(expires_at)
    signature = authority_key.sign(_signed_bytes(run_id, username, public_key, expiration_time))
    return AccessToken(username=username, public_key=public_key, expiration_time=expiration_time, signature=signature)


def token_problem(token: AccessToken, authority: RSAPublicKey, run_id: str, now: float | None = None) -> str | None:
    """None when ``token`` is valid in ``run_id`` at ``now``; else the reason (one of ``REASONS``).

    The signature is checked before the expiry, so a token whose expiry was pushed back counts as tampered."""
    if not token.signature and not token.public_key:
        return MISSING_TOKEN
    try:
        expires_at = parse_expiration(token.expiration_time)
        RSAPublicKey.from_bytes(token.public_key)
    except Exception:  # ValueError, or cryptography's UnsupportedAlgorithm for a key of another kind
        return BAD_TOKEN
    signed = _signed_bytes(run_id, token.username, token.public_key, token.expiration_time)
    if not authority.verify(signed, token.signature):
        return BAD_TOKEN
    if expires_at <= (get_dht_time() if now is None else now):
        return EXPIRED_TOKEN
    return None


def token_expires_at(token: AccessToken) -> float:
    return parse_expiration(token.expiration_time)


def token_to_text(token: AccessToken) -> str:
    return base64.b64encode(token.SerializeToString()).decode()


def token_from_bytes(raw: bytes) -> AccessToken:
    """Parses a serialized token; ValueError when it is not one (or absurdly large)."""
    if len(raw) > MAX_TOKEN_BYTES:
        raise ValueError(f"token of {len(raw)} bytes is larger than {MAX_TOKEN_BYTES}")
    token = AccessToken()
    try:
        token.ParseFromString(raw)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"not a serialized AccessToken: {e}") from None
    return token


def public_key_from_text(text: str) -> RSAPublicKey:
    """The authority key as ``/api/v1/run`` and the config carry it: OpenSSH text (``ssh-rsa AAAA...``) or base64 of
    it. ValueError when it is neither."""
    raw = text.strip().encode()
    if not raw.startswith(b"ssh-rsa "):
        try:
            raw = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ValueError("authority_public_key is neither OpenSSH text nor base64") from None
    return RSAPublicKey.from_bytes(raw)


# ---------------------------------------------------------------------------------------------------------------
# Credentials and the token request (join time, synchronous; refresh inside the DHT process, asynchronous)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A volunteer's allowlist entry as they hold it: the name and the secret (``--auth_key NAME:SECRET``)."""

    name: str
    secret: str

    @classmethod
    def parse(cls, auth_key: str) -> Credentials:
        name, sep, secret = auth_key.strip().partition(":")
        if not sep or not name or not secret:
            raise UserError(
                "--auth_key must look like NAME:SECRET, as printed by `python -m coordinator allowlist add`"
            )
        return cls(name, secret)

    def __repr__(self) -> str:  # never print the secret into a log or a traceback
        return f"Credentials(name={self.name!r}, secret=<hidden>)"


class TokenRefused(UserError):
    """The coordinator answered and said no (not allowlisted, wrong key, banned): retrying will not help."""


def _token_body(credentials: Credentials, public_key: RSAPublicKey) -> dict:
    return {
        "name": credentials.name,
        "key": credentials.secret,
        "public_key": base64.b64encode(public_key.to_bytes()).decode(),
    }


def _token_from_response(response: httpx.Response, base: str) -> AccessToken:
    """The token in a ``POST /api/v1/auth/token`` answer; TokenRefused with the coordinator's one line if refused."""
    if response.status_code != 200:
        try:
            detail = str(response.json().get("detail", ""))
        except ValueError:
            detail = ""
        message = detail or f"the coordinator at {base} refused an access token (HTTP {response.status_code})"
        raise (TokenRefused if response.status_code == 403 else UserError)(message)
    try:
        return token_from_bytes(base64.b64decode(response.json()["token"], validate=True))
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"the coordinator at {base} sent an unreadable access token ({e})") from None


def request_token(
    coordinator_url: str, credentials: Credentials, public_key: RSAPublicKey, timeout: float = 30.0
) -> AccessToken:
    """Asks the coordinator for a token bound to ``public_key``; UserError (one line) when refused or unreachable."""
    base = coordinator_url.rstrip("/")
    try:
        response = httpx.post(f"{base}{TOKEN_PATH}", json=_token_body(credentials, public_key), timeout=timeout)
    except httpx.HTTPError as e:
        raise UserError(f"cannot reach the coordinator at {base} for an access token: {e}") from None
    return _token_from_response(response, base)


async def request_token_async(
    coordinator_url: str, credentials: Credentials, public_key: RSAPublicKey, timeout: float = 30.0
) -> AccessToken:
    base = coordinator_url.rstrip("/")
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(f"{base}{TOKEN_PATH}", json=_token_body(credentials, public_key))
    except httpx.HTTPError as e:
        raise UserError(f"cannot reach the coordinator at {base} for an access token: {e}") from None
    return _token_from_response(response, base)


# ---------------------------------------------------------------------------------------------------------------
# hivemind authorizers (DHT)
# ---------------------------------------------------------------------------------------------------------------


class RunTokenAuthorizer(TokenAuthorizerBase):
    """hivemind's token protocol with this run's token rules; counts every refusal by reason in ``rejected``.

    Lives in the DHT's own process (hivemind forks it with the node); ``dht_auth_rejections`` reads the counts out.
    Subclasses say where a fresh token comes from (``get_token``). A token is refreshed once less than a quarter of
    its lifetime (as first seen) is left, so peers renew well before the authority's expiry."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        token: AccessToken | None = None,
    ):
        super().__init__(local_private_key)
        self.run_id = run_id
        self.authority = authority
        self.rejected: Counter[str] = Counter()
        self.revoked = Revoked()  # kept current by follow_revocations
        self._follower: asyncio.Task | None = None
        self._lifetime: float | None = None
        self._last_warning: dict[str, float] = {}
        if token is not None:
            self._accept_own(token)
            self._local_access_token = token

    def _accept_own(self, token: AccessToken) -> AccessToken:
        """Checks a token this node is about to use: signed by the authority, unexpired, bound to our own key."""
        problem = token_problem(token, self.authority, self.run_id)
        if problem is None and token.public_key != self.local_public_key.to_bytes():
            problem = WRONG_KEY
        if problem is not None:
            raise UserError(f"the access token for run {self.run_id!r} is not usable here ({problem})")
        self._lifetime = token_expires_at(token) - get_dht_time()
        return token

    def token_problem(self, token: AccessToken) -> str | None:
        """``token_problem`` plus this node's view of the revocations."""
        problem = token_problem(token, self.authority, self.run_id)
        if problem is None and key_fingerprint(token.public_key) in self.revoked.keys:
            problem = REVOKED
        return problem

    def is_token_valid(self, access_token: AccessToken) -> bool:
        problem = self.token_problem(access_token)
        if problem is not None:
            self._reject(problem)
        return problem is None

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        left = token_expires_at(access_token) - get_dht_time()
        return left < (self._lifetime or 0.0) / 4

    async def validate_request(self, request: AuthorizedRequestBase) -> bool:
        signature = bytes(request.auth.signature)  # the base class clears it while checking
        ok = await super().validate_request(request)
        if not ok:
            self._classify_signed_failure(request, request.auth.client_access_token, signature)
        return ok

    async def validate_response(self, response: AuthorizedResponseBase, request: AuthorizedRequestBase) -> bool:
        signature = bytes(response.auth.signature)
        ok = await super().validate_response(response, request)
        if not ok:
            self._classify_signed_failure(response, response.auth.service_access_token, signature)
        return ok

    def _classify_signed_failure(self, message, token: AccessToken, signature: bytes) -> None:
        """After the base class refused a message: if its token was fine (else it is counted already), tell a
        message not signed by the token's key from a replay (nonce seen, or clocks a minute apart)."""
        if self.token_problem(token) is not None:
            return
        message.auth.signature = b""
        signed_by_holder = RSAPublicKey.from_bytes(token.public_key).verify(message.SerializeToString(), signature)
        message.auth.signature = signature
        self._reject(REPLAYED if signed_by_holder else WRONG_KEY)

    def _reject(self, reason: str) -> None:
        self.rejected[reason] += 1
        now = time.monotonic()
        if now - self._last_warning.get(reason, -1e9) >= 60.0:  # at most one line a minute per reason
            self._last_warning[reason] = now
            logger.warning(
                "refused a DHT message of run %s: %s (%d so far)", self.run_id, reason, self.rejected[reason]
            )

    def rejected_counts(self) -> dict[str, int]:
        return dict(self.rejected)

    async def follow_revocations(self, node, every: float) -> None:
        """Runs in the DHT process for the node's lifetime: re-reads ``<run_id>_revoked`` every ``every`` seconds.
        A failed read keeps the last list (revocations only ever grow while their tokens live)."""
        while True:
            try:
                found = await node.get(revocations_key(self.run_id), latest=True)
                revoked = verified_revocations(_entries(found), self.run_id, self.authority)
                if revoked.keys - self.revoked.keys:
                    logger.warning("run %s: %d revoked keys now refused", self.run_id, len(revoked.keys))
                self.revoked = self.revoked | revoked
            except Exception as e:
                logger.debug("revocations not read: %s", e)
            await asyncio.sleep(every)


class CoordinatorTokenAuthorizer(RunTokenAuthorizer):
    """A volunteer's DHT authorizer: fresh tokens come from the coordinator's ``POST /api/v1/auth/token``.

    Start it with the token got at join time (``request_token``), so the DHT needs no HTTP call to come up; later
    refreshes run inside the DHT's event loop with a bounded timeout. If the organiser removes or bans the volunteer,
    the coordinator revokes this peer's key: every other node stops answering it within seconds (``REVOKED``), and
    its next refresh is refused."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        coordinator_url: str,
        credentials: Credentials,
        token: AccessToken | None = None,
        timeout: float = 20.0,
    ):
        super().__init__(run_id, authority, local_private_key, token)
        self.coordinator_url = coordinator_url
        self.credentials = credentials
        self.timeout = timeout

    async def get_token(self) -> AccessToken:
        token = await request_token_async(self.coordinator_url, self.credentials, self.local_public_key, self.timeout)
        return self._accept_own(token)


class LocalTokenAuthorizer(RunTokenAuthorizer):
    """An authorizer whose tokens come from a local function of its public key: the authority's own node (the
    coordinator signs its tokens itself, no HTTP round trip). It runs in the DHT's forked process, so ``issue`` must
    need nothing but memory (a key), no store or socket."""

    def __init__(
        self,
        run_id: str,
        authority: RSAPublicKey,
        local_private_key: RSAPrivateKey,
        issue: Callable[[bytes], AccessToken],
    ):
        super().__init__(run_id, authority, local_private_key)
        self._issue = issue
        self._local_access_token = self._accept_own(issue(self.local_public_key.to_bytes()))

    async def get_token(self) -> AccessToken:
        return self._accept_own(self._issue(self.local_public_key.to_bytes()))


async def _authorizer_rejections(dht: hivemind.DHT, node) -> dict[str, int]:
    """Runs inside the DHT process (``DHT.run_coroutine``): the authorizer's cumulative refusal counts."""
    authorizer = getattr(node.protocol, "authorizer", None)
    return authorizer.rejected_counts() if isinstance(authorizer, RunTokenAuthorizer) else {}


def dht_auth_rejections(dht: hivemind.DHT) -> dict[str, int]:
    """Cumulative counts, by reason, of the messages the DHT node's authorizer refused (empty for an open run)."""
    return dht.run_coroutine(_authorizer_rejections)


async def _start_following(every: float, dht: hivemind.DHT, node) -> bool:
    authorizer = getattr(node.protocol, "authorizer", None)
    if not isinstance(authorizer, RunTokenAuthorizer):
        return False
    if authorizer._follower is None or authorizer._follower.done():
        authorizer._follower = asyncio.create_task(authorizer.follow_revocations(node, every))
    return True


def follow_revocations(dht: hivemind.DHT, every: float = REVOCATIONS_EVERY) -> bool:
    """Makes the DHT node's authorizer follow ``<run_id>_revoked`` (a task in the DHT process that ends with it);
    False for a node without a run authorizer (an open run). Calling it again changes nothing."""
    return dht.run_coroutine(functools.partial(_start_following, every))


async def _authorizer_revoked(dht: hivemind.DHT, node) -> Revoked:
    authorizer = getattr(node.protocol, "authorizer", None)
    return authorizer.revoked if isinstance(authorizer, RunTokenAuthorizer) else Revoked()


def dht_revoked(dht: hivemind.DHT) -> Revoked:
    """What the DHT node's authorizer refuses as revoked now."""
    return dht.run_coroutine(_authorizer_revoked)


# ---------------------------------------------------------------------------------------------------------------
# Revocations: the authority's signed list of keys and peer ids that no token admits any more
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Revoked:
    """Revoked token keys (``key_fingerprint``) and libp2p peer ids (base58)."""

    keys: frozenset[bytes] = frozenset()
    peer_ids: frozenset[str] = frozenset()

    def __or__(self, other: Revoked) -> Revoked:
        return Revoked(self.keys | other.keys, self.peer_ids | other.peer_ids)

    def covers(self, peer_id: PeerID, token: AccessToken) -> bool:
        return peer_id.to_base58() in self.peer_ids or key_fingerprint(token.public_key) in self.keys


class RevocationRecord(pydantic.BaseModel):
    """Value of a ``<run_id>_revoked`` entry: what the authority revoked, and its signature over it."""

    keys: pydantic.conlist(pydantic.conbytes(min_length=32, max_length=32, strict=True), max_items=MAX_REVOKED)
    peer_ids: pydantic.conlist(pydantic.constr(min_length=1, max_length=128, strict=True), max_items=MAX_REVOKED)
    time: pydantic.StrictFloat
    signature: pydantic.conbytes(min_length=1, max_length=1024, strict=True)


class RevocationsSchema(pydantic.BaseModel):
    revoked: dict[BytesWithPublicKey, RevocationRecord]


def _revocation_bytes(run_id: str, keys: list[bytes], peer_ids: list[str], time_: float) -> bytes:
    return MSGPackSerializer.dumps([REVOCATION_DOMAIN, run_id, list(keys), list(peer_ids), time_])


def sign_revocations(
    authority_key: RSAPrivateKey, run_id: str, keys: list[bytes], peer_ids: list[str], now: float | None = None
) -> dict:
    """The ``<run_id>_revoked`` value for ``keys`` (fingerprints) and ``peer_ids``, newest first, signed by the
    authority; beyond ``MAX_REVOKED`` of either the oldest are left out (logged)."""
    if len(keys) > MAX_REVOKED or len(peer_ids) > MAX_REVOKED:
        logger.warning("revocation list of run %s truncated to the newest %d keys and peer ids", run_id, MAX_REVOKED)
    keys, peer_ids = sorted(keys[:MAX_REVOKED]), sorted(peer_ids[:MAX_REVOKED])
    now = time.time() if now is None else float(now)
    signature = authority_key.sign(_revocation_bytes(run_id, keys, peer_ids, now))
    return RevocationRecord(keys=keys, peer_ids=peer_ids, time=now, signature=signature).dict()


def verified_revocations(entries: dict, run_id: str, authority: RSAPublicKey) -> Revoked:
    """The union of the ``<run_id>_revoked`` entries (subkey -> value) whose authority signature verifies; whoever
    stored an entry, only the authority's signature makes it count. Anything else is skipped."""
    revoked = Revoked()
    for value in entries.values():
        try:
            record = RevocationRecord.parse_obj(value)
        except Exception:
            continue
        if authority.verify(_revocation_bytes(run_id, record.keys, record.peer_ids, record.time), record.signature):
            revoked = revoked | Revoked(frozenset(record.keys), frozenset(record.peer_ids))
    return revoked


def _entries(found) -> dict:
    if found is None or not isinstance(found.value, dict):
        return {}
    return {subkey: item.value for subkey, item in found.value.items()}


def fetch_revocations(dht: hivemind.DHT, run_id: str, authority: RSAPublicKey) -> Revoked:
    """What the authority has revoked, as the DHT holds it now (blocking)."""
    return verified_revocations(_entries(dht.get(revocations_key(run_id), latest=True)), run_id, authority)


# ---------------------------------------------------------------------------------------------------------------
# Member records and the averaging gate
# ---------------------------------------------------------------------------------------------------------------


class MemberRecord(pydantic.BaseModel):
    """Value of one ``<run_id>_members`` entry: which libp2p peer the signer runs, the token that admits it, and the
    proof that the libp2p peer agrees: its identity public key (OpenSSH) and its signature of ``_peer_proof_bytes``."""

    peer_id: pydantic.constr(min_length=1, max_length=128, strict=True)
    token: pydantic.conbytes(min_length=1, max_length=MAX_TOKEN_BYTES, strict=True)
    peer_key: pydantic.conbytes(max_length=2048, strict=True) = b""
    peer_signature: pydantic.conbytes(max_length=1024, strict=True) = b""


class MembersSchema(pydantic.BaseModel):
    members: dict[BytesWithPublicKey, MemberRecord]


def member_validators(run_id: str) -> list[SchemaValidator]:
    """The schema of ``<run_id>_members`` and ``<run_id>_revoked`` records, to run beside the signature validator
    on every node."""
    return [SchemaValidator(MembersSchema, prefix=run_id), SchemaValidator(RevocationsSchema, prefix=run_id)]


def peer_id_of(public_key: RSAPublicKey) -> PeerID:
    """The libp2p peer id of an RSA identity key (the libp2p spec: sha2-256 multihash of the protobuf public key),
    as ``PeerID.from_identity`` derives it from the private key file."""
    der = public_key._public_key.public_bytes(
        encoding=serialization.Encoding.DER, format=serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return PeerID(b"\x12\x20" + hashlib.sha256(encoded).digest())  # multihash: sha2-256, 32 bytes


@functools.lru_cache(maxsize=16)
def load_identity(identity_path: str) -> RSAPrivateKey:
    """The RSA key in a libp2p identity file (what hivemind's ``P2P.generate_identity`` writes); UserError if the
    file holds anything else."""
    try:
        data = crypto_pb2.PrivateKey.FromString(Path(identity_path).read_bytes()).data
        private = serialization.load_der_private_key(data, password=None)
    except Exception as e:
        raise UserError(f"identity file {identity_path} is not a libp2p RSA key: {e}") from None
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key._private_key = private
    try:
        key.get_public_key()
    except Exception:
        raise UserError(f"identity file {identity_path} is not a libp2p RSA key") from None
    return key


def dht_identity(dht: hivemind.DHT) -> RSAPrivateKey:
    """The identity key the DHT's p2pd runs with; UserError when it started without an identity file (p2pd made a
    key of its own that we cannot sign with) or the file is not the one of this peer id."""
    path = dht.kwargs.get("identity_path")
    if not path:
        raise UserError("a private run's member record needs the DHT started with an identity file (--identity_path)")
    key = load_identity(str(path))
    if peer_id_of(key.get_public_key()) != dht.peer_id:
        raise UserError(f"identity file {path} is not the identity of this DHT's peer {dht.peer_id}")
    return key


def _peer_proof_bytes(run_id: str, signer_subkey: bytes) -> bytes:
    return MSGPackSerializer.dumps([PEER_PROOF_DOMAIN, run_id, signer_subkey])


def member_record(
    run_id: str, signer_public_key: bytes, token: AccessToken, peer_id: PeerID, identity: RSAPrivateKey
) -> dict:
    """The value of a member record for ``peer_id``, proven by its ``identity`` key."""
    return MemberRecord(
        peer_id=peer_id.to_base58(),
        token=token.SerializeToString(),
        peer_key=identity.get_public_key().to_bytes(),
        peer_signature=identity.sign(_peer_proof_bytes(run_id, signer_public_key)),
    ).dict()


def proves_peer_id(record: MemberRecord, peer_id: PeerID, run_id: str, signer_subkey: bytes) -> bool:
    """Whether the record's identity key is ``peer_id``'s and signed this run and this record key."""
    try:
        key = RSAPublicKey.from_bytes(record.peer_key)
    except Exception:
        return False
    return peer_id_of(key) == peer_id and key.verify(_peer_proof_bytes(run_id, signer_subkey), record.peer_signature)


def publish_member_record(
    dht: hivemind.DHT, run_id: str, signer_public_key: bytes, token: AccessToken, ttl: float | None = None
) -> bool:
    """Stores this node's member record (subkey = ``signer_public_key``, the ``[owner:...]`` form the signature
    validator signs with), proven by the DHT's identity key (``dht_identity``); it expires with the token, or after
    ``ttl`` seconds if sooner. Returns whether the DHT accepted it."""
    if owner_subkey(token.public_key) != signer_public_key:
        raise ValueError("the token is bound to another key than the one that signs the member record")
    expires_at = token_expires_at(token)
    if ttl is not None:
        expires_at = min(expires_at, get_dht_time() + ttl)
    value = member_record(run_id, signer_public_key, token, dht.peer_id, dht_identity(dht))
    return bool(dht.store(members_key(run_id), value, expires_at, subkey=signer_public_key))


def valid_members(
    entries: dict, run_id: str, authority: RSAPublicKey, now: float | None = None, revoked: Revoked | None = None
) -> Iterator[tuple[PeerID, AccessToken]]:
    """(libp2p peer id, token) of each ``<run_id>_members`` entry (subkey -> value) that counts: its token is valid
    and bound to the key that signed the record (the subkey, whose signature the DHT's ``RSASignatureValidator``
    already checked), the peer id's own identity key signed it (``proves_peer_id``), and neither the key nor the
    peer id is ``revoked``. Anything else is skipped."""
    now = get_dht_time() if now is None else now
    revoked = revoked or Revoked()
    for subkey, value in entries.items():
        try:
            record = MemberRecord.parse_obj(value)
            token = token_from_bytes(record.token)
            peer_id = PeerID.from_base58(record.peer_id)
        except Exception:
            continue
        if token_problem(token, authority, run_id, now) is not None or owner_subkey(token.public_key) != subkey:
            continue
        if not proves_peer_id(record, peer_id, run_id, subkey):
            continue
        if not revoked.covers(peer_id, token):
            yield peer_id, token


def read_members(
    entries: dict, run_id: str, authority: RSAPublicKey, now: float | None = None, revoked: Revoked | None = None
) -> dict[PeerID, float]:
    """Admitted libp2p peer ids -> when their admission ends (the latest expiry among their valid records)."""
    admitted: dict[PeerID, float] = {}
    for peer_id, token in valid_members(entries, run_id, authority, now, revoked):
        admitted[peer_id] = max(admitted.get(peer_id, 0.0), token_expires_at(token))
    return admitted


def fetch_member_entries(dht: hivemind.DHT, run_id: str) -> dict:
    """The raw ``<run_id>_members`` entries (subkey -> value) as the DHT holds them now (blocking)."""
    return _entries(dht.get(members_key(run_id), latest=True))


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


def authenticate_peer(cfg: RunConfig, coordinator_url: str | None, signing: RecordSigning) -> PrivatePeer | None:
    """Join step one of a private run (None for an open run): get a token for the key that signs this peer's
    records, and add the member-record schema to its validators. Must run before the DHT starts."""
    private_key = RSAPrivateKey.process_wide()  # hivemind's default signer: the one ``signing`` was built with
    if owner_subkey(private_key.get_public_key().to_bytes()) != signing.public_key:
        raise RuntimeError("the record signer is not the process-wide key; the token would be bound to another key")
    auth = authenticate(cfg.run_id, coordinator_url, cfg.swarm.auth_key, cfg.swarm.authority_public_key, private_key)
    if auth is None:
        return None
    ensure_identity(cfg)
    signing.validators.extend(member_validators(cfg.run_id))
    logger.info("access token for %s until %s", auth.credentials.name, auth.token.expiration_time)
    return PrivatePeer(auth, signing.public_key)


def ensure_identity(cfg: RunConfig) -> str:
    """A private run's peer proves its libp2p id with the identity file's key, so it needs one: without
    ``--identity_path``, a fresh path in a private temporary folder (removed at exit), where p2pd's start writes a new
    identity (a new peer id, as without a file)."""
    if not cfg.swarm.identity_path:
        folder = tempfile.mkdtemp(prefix="warmswarm-identity-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        cfg.swarm.identity_path = os.path.join(folder, "identity.key")
    return cfg.swarm.identity_path


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
            except TokenRefused as e:
                logger.error("the coordinator refused to renew this peer's access token: %s", e)
                if self.on_revoked is not None:
                    self.on_revoked(str(e))
                return
            except UserError as e:  # coordinator unreachable for now: the current token is still good for a while
                logger.warning("access token not renewed yet: %s", e)
            except Exception:
                logger.exception("could not refresh the member record; will retry")
