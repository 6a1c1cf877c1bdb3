"""Member records: which libp2p peer a private run's volunteer runs, proven by its token and its identity key.

Hivemind's averagers take no authorizer, so each peer publishes a *member record* under ``<run_id>_members``
(``members_key``; subkey = its RSA public key, signed; value = {libp2p peer id, token, proof}), and
``MembershipGate`` (``peer.swarm.membership``) admits a libp2p peer id into averaging only while a valid record
names it (``valid_members``, ``read_members``).

Who runs which libp2p id: a member record names a libp2p peer id, so it also carries a signature of (run_id, record
key) by that peer id's own identity key (the RSA key in the ``--identity_path`` file p2pd runs with; a private run's
peer without one gets a fresh file, ``ensure_identity`` in ``peer.swarm.membership``). A member can therefore admit
only the libp2p peer it really runs, not vouch for another one.

Why in ``peer.run``: the record format and its checks are part of the run's contract; every peer and the coordinator
publish their own record and read the others' with these functions, and none of them starts a process.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterator
from pathlib import Path

import hivemind
import pydantic.v1 as pydantic
from cryptography.hazmat.primitives import serialization
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.p2p import PeerID
from hivemind.proto import crypto_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from peer.errors import UserError
from peer.run.revocations import RevocationsSchema, Revoked, record_entries
from peer.run.tokens import MAX_TOKEN_BYTES, owner_subkey, token_expires_at, token_from_bytes, token_problem

PEER_PROOF_DOMAIN = b"warmswarm-member-peer-id-v1"


def members_key(run_id: str) -> str:
    return f"{run_id}_members"


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
    return record_entries(dht.get(members_key(run_id), latest=True))
