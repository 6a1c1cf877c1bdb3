"""Private runs on the peer side: token rules, member records, the averaging gate, and real DHT nodes (hivemind.DHT
processes with their p2pd daemons on loopback) refusing forged, tampered and expired tokens and counting them."""

from __future__ import annotations

import time

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.p2p import PeerID
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.config import PeerSettings
from peer.errors import UserError
from peer.run.members import (
    load_identity,
    member_record,
    member_validators,
    members_key,
    peer_id_of,
    publish_member_record,
    read_members,
)
from peer.run.tokens import (
    BAD_TOKEN,
    EXPIRED_TOKEN,
    MISSING_TOKEN,
    WRONG_KEY,
    Credentials,
    owner_subkey,
    sign_token,
    token_problem,
)
from peer.swarm.authorizers import RunTokenAuthorizer, dht_auth_rejections
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.membership import MembershipGate

RUN = "authtest"
AUTHORITY = RSAPrivateKey()
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def key_bytes(key: RSAPrivateKey) -> bytes:
    return key.get_public_key().to_bytes()


def token_for(key: RSAPrivateKey, name: str = "alice", ttl: float = 600.0, authority=AUTHORITY, run=RUN):
    return sign_token(authority, run, name, key_bytes(key), get_dht_time() + ttl)


def tampered(token: AccessToken, **fields) -> AccessToken:
    copy = AccessToken()
    copy.CopyFrom(token)
    for name, value in fields.items():
        setattr(copy, name, value)
    return copy


def flip_byte(data: bytes, index: int = 10) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# ---------------------------------------------------------------------------------------------------------------
# token rules (no network)
# ---------------------------------------------------------------------------------------------------------------

PEER = RSAPrivateKey()
OTHER = RSAPrivateKey()


def test_a_token_signed_by_the_authority_is_valid_until_it_expires():
    token = token_for(PEER, ttl=60)
    assert token_problem(token, AUTHORITY.get_public_key(), RUN) is None
    assert token_problem(token, AUTHORITY.get_public_key(), RUN, now=get_dht_time() + 61) == EXPIRED_TOKEN


@pytest.mark.parametrize(
    "change",
    [
        lambda t: dict(signature=flip_byte(t.signature)),
        lambda t: dict(username="mallory"),
        lambda t: dict(public_key=key_bytes(OTHER)),
        lambda t: dict(expiration_time=t.expiration_time.replace(t.expiration_time[:4], "2099")),
        lambda t: dict(expiration_time="tomorrow"),
    ],
    ids=["signature_byte", "username", "public_key", "expiry_pushed_back", "expiry_garbage"],
)
def test_any_change_to_a_token_makes_it_a_bad_token(change):
    token = token_for(PEER)
    assert token_problem(tampered(token, **change(token)), AUTHORITY.get_public_key(), RUN) == BAD_TOKEN


def test_a_token_of_another_authority_or_run_is_bad_and_an_empty_one_missing():
    authority = AUTHORITY.get_public_key()
    assert token_problem(token_for(PEER, authority=RSAPrivateKey()), authority, RUN) == BAD_TOKEN
    assert token_problem(token_for(PEER, run="another-run"), authority, RUN) == BAD_TOKEN
    assert token_problem(AccessToken(), authority, RUN) == MISSING_TOKEN


def test_credentials_parse_and_never_show_the_secret():
    creds = Credentials.parse("alice:s3cr3t:with-colon")
    assert (creds.name, creds.secret) == ("alice", "s3cr3t:with-colon")
    assert "s3cr3t" not in repr(creds)
    for bad in ("alice", ":secret", "alice:"):
        with pytest.raises(UserError, match="NAME:SECRET"):
            Credentials.parse(bad)


def identity_of(key: RSAPrivateKey) -> PeerID:
    return peer_id_of(key.get_public_key())


def record(signer: RSAPrivateKey, token: AccessToken, identity: RSAPrivateKey, peer_id: PeerID | None = None) -> dict:
    """A member record signed (subkey) by ``signer``, proven by ``identity``, naming ``peer_id`` (default: the
    identity's own)."""
    subkey = owner_subkey(key_bytes(signer))
    return member_record(RUN, subkey, token, peer_id or identity_of(identity), identity)


def test_read_members_admits_only_valid_tokens_bound_to_the_record_signer():
    good, bound_elsewhere, expired, identity = RSAPrivateKey(), RSAPrivateKey(), RSAPrivateKey(), RSAPrivateKey()
    peer_id = identity_of(identity)
    entries = {
        owner_subkey(key_bytes(good)): record(good, token_for(good), identity),
        # a member's token presented in a record signed by someone else's key
        owner_subkey(key_bytes(bound_elsewhere)): record(bound_elsewhere, token_for(good), identity),
        owner_subkey(key_bytes(expired)): record(expired, token_for(expired, ttl=-1), identity),
        b"[owner:junk]": {"peer_id": "not-a-peer-id", "token": b"\x00garbage"},
    }
    now = get_dht_time()
    admitted = read_members(entries, RUN, AUTHORITY.get_public_key(), now)
    assert list(admitted) == [peer_id]
    del entries[owner_subkey(key_bytes(good))]
    assert read_members(entries, RUN, AUTHORITY.get_public_key(), now) == {}


def test_a_member_cannot_vouch_for_a_libp2p_id_whose_identity_key_did_not_sign_its_record():
    member, identity, victim, other = RSAPrivateKey(), RSAPrivateKey(), RSAPrivateKey(), RSAPrivateKey()
    token = token_for(member)
    subkey = owner_subkey(key_bytes(member))
    honest = record(member, token, identity)
    assert list(read_members({subkey: honest}, RUN, AUTHORITY.get_public_key())) == [identity_of(identity)]
    victim_proof = record(other, token_for(other), victim)  # someone else's genuine proof, for their record key
    claims = {
        "own_identity_other_id": record(member, token, identity, peer_id=identity_of(victim)),
        "proof_copied_from_another_record": dict(
            honest,
            peer_id=victim_proof["peer_id"],
            peer_key=victim_proof["peer_key"],
            peer_signature=victim_proof["peer_signature"],
        ),
        "no_proof": {"peer_id": identity_of(victim).to_base58(), "token": token.SerializeToString()},
        "proof_of_another_run": dict(
            honest,
            peer_signature=member_record("another-run", subkey, token, identity_of(identity), identity)[
                "peer_signature"
            ],
        ),
    }
    for name, claim in claims.items():
        assert read_members({subkey: claim}, RUN, AUTHORITY.get_public_key()) == {}, name


def test_the_identity_file_hivemind_writes_gives_the_peer_id_p2pd_runs_with(tmp_path):
    from hivemind.p2p.p2p_daemon import P2P

    path = tmp_path / "identity.key"
    P2P.generate_identity(str(path))
    assert identity_of(load_identity(str(path))) == PeerID.from_identity(path.read_bytes())
    (tmp_path / "junk.key").write_bytes(b"not a key")
    with pytest.raises(UserError, match="is not a libp2p RSA key"):
        load_identity(str(tmp_path / "junk.key"))


# ---------------------------------------------------------------------------------------------------------------
# real DHT nodes
# ---------------------------------------------------------------------------------------------------------------


class FixedTokenAuthorizer(RunTokenAuthorizer):
    """A node presenting whatever token it was given, checked or not: how a forger's node behaves."""

    def __init__(self, token: AccessToken, key: RSAPrivateKey):
        super().__init__(RUN, AUTHORITY.get_public_key(), key)
        self._local_access_token = token

    async def get_token(self) -> AccessToken:
        return self._local_access_token

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        return False


def private_node(key: RSAPrivateKey, token: AccessToken, initial_peers=(), validators=(), identity=None, **kwargs):
    spec = PeerSettings(host_maddrs=LOOPBACK, initial_peers=list(initial_peers), identity_path=identity)
    return start_dht(spec, list(validators), authorizer=FixedTokenAuthorizer(token, key), **kwargs)


@pytest.fixture(scope="module")
def private_dht(tmp_path_factory):
    key = RSAPrivateKey()
    signature = RSASignatureValidator(key)
    identity = str(tmp_path_factory.mktemp("first") / "identity.key")
    dht = private_node(key, token_for(key, "first"), validators=[signature, *member_validators(RUN)], identity=identity)
    yield dht, key, signature
    dht.shutdown()


@pytest.mark.timeout(300)
def test_member_joins_publishes_its_record_and_the_gate_admits_only_it(private_dht, tmp_path):
    first, first_key, first_signature = private_dht
    key = RSAPrivateKey()
    signature = RSASignatureValidator(key)
    token = token_for(key, "bob")
    identity = str(tmp_path / "identity.key")
    member = private_node(key, token, visible_maddrs(first), [signature, *member_validators(RUN)], identity)
    try:
        assert member.store("plain", "hello", get_dht_time() + 60)
        assert first.get("plain", latest=True).value == "hello"
        assert publish_member_record(member, RUN, signature.local_public_key, token)
        gate = MembershipGate(first, RUN, AUTHORITY.get_public_key())
        try:
            assert gate.refresh() == 1
            assert gate.admits(member.peer_id) and gate.why_not(member.peer_id) == ""
            assert not gate.admits(first.peer_id)  # no record of its own yet
            assert "no valid member record" in gate.why_not(first.peer_id)
        finally:
            gate.close()
        # a record claiming the member's key but signed by another node's key never gets into the DHT
        forged = {"peer_id": first.peer_id.to_base58(), "token": token.SerializeToString()}
        assert not first.store(members_key(RUN), forged, get_dht_time() + 60, subkey=signature.local_public_key)
        found = first.get(members_key(RUN), latest=True).value
        assert list(found) == [signature.local_public_key]
        # the member replaces its record with one naming the first node's libp2p id, proven by its own identity
        # key (the only one it holds): the gate admits neither
        vouch = member_record(RUN, signature.local_public_key, token, first.peer_id, load_identity(identity))
        assert member.store(members_key(RUN), vouch, get_dht_time() + 900, subkey=signature.local_public_key)
        gate = MembershipGate(first, RUN, AUTHORITY.get_public_key())
        try:
            assert first.get(members_key(RUN), latest=True).value[signature.local_public_key].value == vouch
            gate.refresh()
            assert not gate.admits(first.peer_id) and not gate.admits(member.peer_id)
        finally:
            gate.close()
    finally:
        member.shutdown()


@pytest.mark.timeout(300)
def test_gate_refuses_an_unknown_peer_at_once_and_admits_it_once_its_record_appears(private_dht):
    """admits() never waits for the DHT: an unknown peer is refused now and the background refresh picks it up."""
    first, first_key, first_signature = private_dht
    gate = MembershipGate(first, RUN, AUTHORITY.get_public_key(), refresh_every=30.0, miss_refresh_after=0.2)
    try:
        assert not gate.admits(first.peer_id)  # refused now: the answer never waits for a DHT read
        assert publish_member_record(first, RUN, first_signature.local_public_key, token_for(first_key, "first"))
        deadline = time.monotonic() + 20
        while not gate.admits(first.peer_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert gate.admits(first.peer_id)
    finally:
        gate.close()


def _forged_tokens():
    attacker = RSAPrivateKey()
    victim_token = token_for(RSAPrivateKey(), "victim")
    yield (
        "signature_byte_flipped",
        attacker,
        tampered(token_for(attacker), signature=flip_byte(token_for(attacker).signature)),
        BAD_TOKEN,
    )
    yield "username_changed", attacker, tampered(token_for(attacker), username="admin"), BAD_TOKEN
    yield "own_key_swapped_in", attacker, tampered(victim_token, public_key=key_bytes(attacker)), BAD_TOKEN
    yield "someone_elses_token", attacker, victim_token, WRONG_KEY
    yield "expired", attacker, token_for(attacker, ttl=-5), EXPIRED_TOKEN
    yield "other_authority", attacker, token_for(attacker, authority=RSAPrivateKey()), BAD_TOKEN


@pytest.mark.timeout(300)
def test_nodes_with_forged_tampered_or_expired_tokens_cannot_join_and_are_counted(private_dht):
    first = private_dht[0]
    for name, key, token, reason in _forged_tokens():
        before = dht_auth_rejections(first).get(reason, 0)
        with pytest.raises(UserError, match="cannot reach any initial peer"):
            private_node(key, token, visible_maddrs(first), startup_timeout=30)
        after = dht_auth_rejections(first).get(reason, 0)
        assert after > before, f"{name}: {reason} not counted ({dht_auth_rejections(first)})"


@pytest.mark.timeout(300)
def test_a_node_without_any_token_cannot_join(private_dht):
    first = private_dht[0]
    before = dht_auth_rejections(first).get(MISSING_TOKEN, 0)
    with pytest.raises(UserError, match="cannot reach any initial peer"):
        start_dht(PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(first)), startup_timeout=30)
    assert dht_auth_rejections(first).get(MISSING_TOKEN, 0) > before
