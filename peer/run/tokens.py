"""The access-token format of a private run and its checks: what the authority signs and every node verifies.

Private runs: coordinator-signed, expiring access tokens, checked on every DHT call and before every averaging.

The coordinator is the authority (``coordinator.auth``). A volunteer proves it is on the allowlist once, over HTTP
(``request_token``), and gets an ``AccessToken`` (hivemind's protobuf) naming it, bound to its RSA public key and
expiring. From then on every DHT request carries it (``peer.swarm.authorizers``), averaging admits a peer only while
a member record carrying it names the peer (``peer.run.members``, ``peer.swarm.membership``), and the authority can
revoke it before it expires (``peer.run.revocations``).

A token is valid when the authority's signature covers (run_id, username, public key, expiration) and it has not
expired; the run_id inside the signed bytes keeps a token of one run from opening another run with the same
coordinator key. What is refused is counted by reason (``REASONS``), so peers log it and the coordinator's
``warmswarm_rejected_records_total{reason}`` shows it.

Why in ``peer.run``: the token is part of the run's contract. The coordinator signs it (``sign_token``) and serves
it (``TOKEN_PATH``), every peer requests and checks it; both import it from here, and it starts no process.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.errors import UserError

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


class TokenRequestRefused(UserError):
    """The coordinator answered and said no (not allowlisted, wrong key, banned): retrying will not help."""


def _token_body(credentials: Credentials, public_key: RSAPublicKey) -> dict:
    return {
        "name": credentials.name,
        "key": credentials.secret,
        "public_key": base64.b64encode(public_key.to_bytes()).decode(),
    }


def _token_from_response(response: httpx.Response, base: str) -> AccessToken:
    """The token in a ``POST /api/v1/auth/token`` answer; TokenRequestRefused with the coordinator's one line if
    refused."""
    if response.status_code != 200:
        try:
            detail = str(response.json().get("detail", ""))
        except ValueError:
            detail = ""
        message = detail or f"the coordinator at {base} refused an access token (HTTP {response.status_code})"
        raise (TokenRequestRefused if response.status_code == 403 else UserError)(message)
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
