"""Revocations on the peer side (no network): the authority's signed list counts only with its signature over this
run's bytes, and once a key or peer id is on it the gate's member table and the DHT authorizer refuse it."""

from __future__ import annotations

import pytest
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.run.members import member_record, peer_id_of, read_members
from peer.run.revocations import MAX_REVOKED, RevocationRecord, Revoked, sign_revocations, verified_revocations
from peer.run.tokens import REVOKED, key_fingerprint, owner_subkey, sign_token
from peer.swarm.authorizers import LocalTokenAuthorizer

RUN = "revoketest"
AUTHORITY = RSAPrivateKey()
ALICE, BOB = RSAPrivateKey(), RSAPrivateKey()
ALICE_IDENTITY, BOB_IDENTITY = RSAPrivateKey(), RSAPrivateKey()  # their libp2p identity keys
ALICE_PEER, BOB_PEER = peer_id_of(ALICE_IDENTITY.get_public_key()), peer_id_of(BOB_IDENTITY.get_public_key())


def key_bytes(key: RSAPrivateKey) -> bytes:
    return key.get_public_key().to_bytes()


def token_for(key: RSAPrivateKey, name: str):
    return sign_token(AUTHORITY, RUN, name, key_bytes(key), get_dht_time() + 3600)


def member_entries() -> dict:
    return {
        owner_subkey(key_bytes(key)): member_record(
            RUN, owner_subkey(key_bytes(key)), token_for(key, name), peer, ident
        )
        for key, peer, ident, name in (
            (ALICE, ALICE_PEER, ALICE_IDENTITY, "alice"),
            (BOB, BOB_PEER, BOB_IDENTITY, "bob"),
        )
    }


def test_a_signed_revocation_list_counts_and_a_forged_or_foreign_one_does_not():
    value = sign_revocations(AUTHORITY, RUN, [key_fingerprint(key_bytes(ALICE))], [ALICE_PEER.to_base58()])
    revoked = verified_revocations({b"[owner:coordinator]": value}, RUN, AUTHORITY.get_public_key())
    assert revoked.keys == {key_fingerprint(key_bytes(ALICE))} and revoked.peer_ids == {ALICE_PEER.to_base58()}

    grown = dict(value, keys=[*value["keys"], key_fingerprint(key_bytes(BOB))])  # a key added after signing
    forged = sign_revocations(RSAPrivateKey(), RUN, [key_fingerprint(key_bytes(BOB))], [])
    other_run = sign_revocations(AUTHORITY, "another-run", [key_fingerprint(key_bytes(BOB))], [])
    for bad in (grown, forged, other_run, {"keys": "junk"}):
        assert verified_revocations({b"[owner:x]": bad}, RUN, AUTHORITY.get_public_key()) == Revoked()
    # entries under several subkeys add up: any one of them signed by the authority is enough
    both = verified_revocations({b"a": value, b"b": forged}, RUN, AUTHORITY.get_public_key())
    assert both.keys == {key_fingerprint(key_bytes(ALICE))}


def test_a_long_revocation_list_keeps_the_newest_entries_and_fits_the_schema():
    keys = [bytes([i % 256, i // 256]) * 16 for i in range(MAX_REVOKED + 10)]  # newest first
    value = sign_revocations(AUTHORITY, RUN, keys, [])
    assert len(value["keys"]) == MAX_REVOKED and keys[0] in value["keys"] and keys[-1] not in value["keys"]
    RevocationRecord.parse_obj(value)


def test_the_member_table_drops_a_revoked_key_or_peer_id_and_keeps_the_others():
    now = get_dht_time()
    everyone = read_members(member_entries(), RUN, AUTHORITY.get_public_key(), now)
    assert set(everyone) == {ALICE_PEER, BOB_PEER}
    by_key = Revoked(keys=frozenset({key_fingerprint(key_bytes(ALICE))}))
    assert set(read_members(member_entries(), RUN, AUTHORITY.get_public_key(), now, by_key)) == {BOB_PEER}
    by_peer = Revoked(peer_ids=frozenset({ALICE_PEER.to_base58()}))
    assert set(read_members(member_entries(), RUN, AUTHORITY.get_public_key(), now, by_peer)) == {BOB_PEER}


@pytest.mark.parametrize("revoke", [False, True], ids=["not_revoked", "revoked"])
def test_the_authorizer_refuses_a_valid_token_bound_to_a_revoked_key_and_counts_it(revoke):
    authorizer = LocalTokenAuthorizer(RUN, AUTHORITY.get_public_key(), BOB, lambda key: token_for(BOB, "bob"))
    if revoke:
        authorizer.revoked = Revoked(keys=frozenset({key_fingerprint(key_bytes(ALICE))}))
    assert authorizer.is_token_valid(token_for(ALICE, "alice")) is not revoke
    assert authorizer.rejected_counts() == ({REVOKED: 1} if revoke else {})
    assert authorizer.is_token_valid(token_for(BOB, "bob"))
