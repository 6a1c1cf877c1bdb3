"""Revocations: the authority's signed list of token keys and libp2p peer ids that no token admits any more.

When the organiser removes a volunteer (or the coordinator bans one), the coordinator publishes ``<run_id>_revoked``
(``revocations_key``): the keys it issued that volunteer tokens for and the libp2p ids seen in their member records,
signed by the authority key (``sign_revocations``). Every node's authorizer follows it (``follow_revocations`` in
``peer.swarm.authorizers``, every few seconds, inside the DHT process) and refuses tokens bound to a revoked key;
``MembershipGate`` (``peer.swarm.membership``) drops revoked keys and peer ids at its next refresh. So a removal
takes effect in seconds, not when the token expires. Whoever stored an entry, only the authority's signature makes
it count (``verified_revocations``).

Why in ``peer.run``: the record is part of the run's contract; the coordinator signs and publishes it, every peer
reads and verifies it, and it starts no process.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import hivemind
import pydantic.v1 as pydantic
from hivemind.dht.schema import BytesWithPublicKey
from hivemind.p2p import PeerID
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import MSGPackSerializer
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.run.tokens import key_fingerprint

logger = logging.getLogger(__name__)


REVOCATION_DOMAIN = b"warmswarm-revocations-v1"
MAX_REVOKED = 512  # per list (keys, peer ids): 16 KB + 24 KB, under the DHT record limit; tokens expire anyway


def revocations_key(run_id: str) -> str:
    return f"{run_id}_revoked"


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


def record_entries(found) -> dict:
    """The entries (subkey -> value) of a DHT dictionary record as ``get`` returns it; {} when there is none."""
    if found is None or not isinstance(found.value, dict):
        return {}
    return {subkey: item.value for subkey, item in found.value.items()}


def fetch_revocations(dht: hivemind.DHT, run_id: str, authority: RSAPublicKey) -> Revoked:
    """What the authority has revoked, as the DHT holds it now (blocking)."""
    return verified_revocations(record_entries(dht.get(revocations_key(run_id), latest=True)), run_id, authority)
