"""Revocation: removing a volunteer from the allowlist (or banning one) takes effect within seconds, not when their
token expires. The authority remembers the keys it issued per volunteer and grant (persistently), revokes them when
the grant goes, and a real private coordinator publishes the revocation that real peers' gates and DHT authorizers
act on while the removed volunteer's token is still valid for most of an hour."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.allowlist import Allowlist, add_volunteer, remove_volunteer
from coordinator.auth import REVOKED_KEY, TokenAuthority, TokenIssueRefused
from coordinator.issued_keys import BANNED_REASON, REMOVED_REASON, IssuedKeys
from peer.config import PeerSettings
from peer.run.members import member_validators
from peer.run.revocations import sign_revocations, verified_revocations
from peer.run.tokens import REVOKED, key_fingerprint, owner_subkey, token_expires_at
from peer.swarm.authorizers import dht_auth_rejections, dht_revoked
from peer.swarm.dht import start_dht
from peer.swarm.membership import Membership, PrivatePeer, authenticate
from tests.coordinator.core.private_run import start_private_coordinator

RUN = "revoke-run"
AUTHORITY_KEY = RSAPrivateKey()


def public(key: RSAPrivateKey) -> bytes:
    return key.get_public_key().to_bytes()


# ---------------------------------------------------------------------------------------------------------------
# the authority's memory (no network)
# ---------------------------------------------------------------------------------------------------------------


def test_dropping_a_volunteer_revokes_exactly_the_keys_it_was_issued_and_they_stay_revoked(tmp_path):
    path = tmp_path / "allow.tsv"
    secrets = {name: add_volunteer(path, name) for name in ("alice", "bob", "eve")}
    banned: set[str] = set()
    issued = IssuedKeys(tmp_path / "issued.sqlite", RUN)
    authority = TokenAuthority(RUN, AUTHORITY_KEY, Allowlist(path), lambda: set(banned), 3600, issued)
    alice_keys, bob_key, eve_key = [RSAPrivateKey(), RSAPrivateKey()], RSAPrivateKey(), RSAPrivateKey()
    for key in alice_keys:  # e.g. a restart: a second peer process, a second key
        authority.issue_token("alice", secrets["alice"], public(key))
    authority.issue_token("bob", secrets["bob"], public(bob_key))
    authority.issue_token("eve", secrets["eve"], public(eve_key))
    assert issued.revoke_departed(authority.allowlist.grants(), banned) == set()
    assert issued.revoked(get_dht_time()) == ([], [])

    remove_volunteer(path, "alice")  # what `python -m coordinator allowlist remove alice` does
    banned.add("eve")
    assert issued.revoke_departed(authority.allowlist.grants(), banned) == {"alice", "eve"}
    keys, peer_ids = issued.revoked(get_dht_time())
    alice = {key_fingerprint(public(key)) for key in alice_keys}
    assert set(keys) == alice | {key_fingerprint(public(eve_key))} and peer_ids == []
    reasons = {(name, reason) for _, _, name, reason in issued.entries()}
    assert reasons == {("alice", REMOVED_REASON), ("bob", ""), ("eve", BANNED_REASON)}

    # what the coordinator publishes verifies with the authority key and names those keys, not bob's
    published = verified_revocations({b"k": sign_revocations(AUTHORITY_KEY, RUN, keys, [])}, RUN, authority.public_key)
    assert alice <= published.keys and key_fingerprint(public(bob_key)) not in published.keys

    # persistent: a restarted coordinator still refuses the old key, even after alice is re-added with a new secret
    issued.close()
    authority.issued = IssuedKeys(tmp_path / "issued.sqlite", RUN)
    new_secret = add_volunteer(path, "alice")
    with pytest.raises(TokenIssueRefused) as refused:
        authority.issue_token("alice", new_secret, public(alice_keys[0]))
    assert refused.value.reason == REVOKED_KEY and "\n" not in str(refused.value)
    assert "restart the peer" in str(refused.value)
    fresh = RSAPrivateKey()
    authority.issue_token("alice", new_secret, public(fresh))  # a new peer process: a new key, a new grant
    assert authority.issued.revoke_departed(authority.allowlist.grants(), banned) == set()
    assert key_fingerprint(public(fresh)) not in authority.issued.revoked(get_dht_time())[0]


def test_only_revocations_whose_tokens_may_still_be_valid_are_published(tmp_path):
    issued = IssuedKeys(tmp_path / "issued.sqlite", RUN)
    now = get_dht_time()
    issued.record(IssuedKeys.KEY, "aa" * 32, "alice", "grant", expires=now - 1)  # its last token has expired
    issued.record(IssuedKeys.KEY, "bb" * 32, "alice", "grant", expires=now + 600)
    assert issued.revoke_departed({}, set()) == {"alice"}
    assert issued.revoked(now) == ([bytes.fromhex("bb" * 32)], [])


# ---------------------------------------------------------------------------------------------------------------
# a real private coordinator and two volunteers' DHT nodes
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Volunteer:
    """A volunteer's peer as ``peer join`` builds it: token over HTTP, DHT with the token authorizer, member record,
    gate (its own key, so two volunteers can live in one test process)."""

    key: RSAPrivateKey
    dht: object
    membership: Membership
    token_expires: float

    @classmethod
    def join(cls, coordinator, url: str, name: str, secret: str, identity_path) -> Volunteer:
        key = RSAPrivateKey()
        auth = authenticate(RUN, url, f"{name}:{secret}", coordinator.private.authority.public_key_text(), key)
        spec = PeerSettings(
            host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=coordinator.initial_peers, identity_path=identity_path
        )
        validators = [RSASignatureValidator(key), *member_validators(RUN)]
        dht = start_dht(spec, validators, authorizer=auth.authorizer(), startup_timeout=60)
        try:
            membership = PrivatePeer(auth, owner_subkey(public(key))).join(dht)
        except BaseException:
            dht.shutdown()
            raise
        return cls(key, dht, membership, token_expires_at(auth.token))

    def stop(self) -> None:
        self.membership.stop()
        self.dht.shutdown()


def wait_for(condition, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every)
    return condition()


def admitted(volunteer: Volunteer, peer) -> bool:
    volunteer.membership.gate.refresh()
    return volunteer.membership.gate.is_member(peer.dht.peer_id)


def sees(volunteer: Volunteer, key: str) -> bool:
    found = volunteer.dht.get(key, latest=True)
    return found is not None and found.value == "written"


@pytest.mark.timeout(420)  # coordinator + two peers on a loaded 2-core machine; the revocation itself takes seconds
def test_a_removed_volunteer_is_refused_within_seconds_while_its_token_is_still_valid(tmp_path):
    allowlist = tmp_path / "allow.tsv"
    secrets = {name: add_volunteer(allowlist, name) for name in ("alice", "bob")}
    # token_ttl: the default, so that without revocation alice would stay in for an hour
    coordinator = start_private_coordinator(RUN, tmp_path / "data", allowlist, token_ttl=3600)
    url = f"http://127.0.0.1:{coordinator.http_port}"
    # the coordinator's wait loop (allowlist re-read, revocations, member record), as `coordinator start` runs it;
    # its checkpoint saver is never due here
    stop = threading.Event()
    loop = threading.Thread(target=coordinator.wait, args=(stop,), daemon=True)
    loop.start()
    volunteers: list[Volunteer] = []
    try:
        alice = Volunteer.join(coordinator, url, "alice", secrets["alice"], str(tmp_path / "alice.id"))
        volunteers.append(alice)
        bob = Volunteer.join(coordinator, url, "bob", secrets["bob"], str(tmp_path / "bob.id"))
        volunteers.append(bob)

        # before: bob averages with alice and sees what she writes to the DHT
        assert wait_for(lambda: admitted(bob, alice), 60), "bob's gate never admitted alice"
        assert alice.dht.store("alice_before", "written", get_dht_time() + 600)
        assert wait_for(lambda: sees(bob, "alice_before"), 60)

        remove_volunteer(allowlist, "alice")
        removed_at = time.monotonic()
        assert wait_for(lambda: not admitted(bob, alice), 60), "bob's gate still admits the removed alice"
        alice_key = key_fingerprint(public(alice.key))
        assert wait_for(lambda: alice_key in dht_revoked(bob.dht).keys, 60), "bob's DHT never learnt the revocation"
        assert wait_for(lambda: alice_key in dht_revoked(coordinator.dht).keys, 60)
        took = time.monotonic() - removed_at
        token_left = alice.token_expires - get_dht_time()
        assert took < 60 and token_left > 3000, (took, token_left)  # refused in seconds, her token good for ~1 h
        assert "revoked by the coordinator" in bob.membership.gate.why_not(alice.dht.peer_id)

        # her DHT messages are refused: a record she writes now reaches neither bob nor the coordinator
        refused_before = dht_auth_rejections(bob.dht).get(REVOKED, 0)
        alice.dht.store("alice_after", "written", get_dht_time() + 600)
        assert not sees(bob, "alice_after")
        found = coordinator.dht.get("alice_after", latest=True)
        assert found is None
        assert dht_auth_rejections(bob.dht).get(REVOKED, 0) > refused_before

        # bob is untouched: still admitted, his writes still reach the coordinator
        assert admitted(bob, bob)
        assert bob.dht.store("bob_after", "written", get_dht_time() + 600)
        found = coordinator.dht.get("bob_after", latest=True)
        assert found is not None and found.value == "written"
    finally:
        for volunteer in reversed(volunteers):
            volunteer.stop()
        stop.set()
        loop.join(timeout=60)
        coordinator.stop()
