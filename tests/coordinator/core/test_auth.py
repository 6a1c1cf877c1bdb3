"""The coordinator as the authority of a private run: the allowlist file, token issuing and its refusals, and a real
private coordinator (DHT, HTTP) that a volunteer joins with its key, while a wrong key, a forged token and a peer
without a member record are refused and counted."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import httpx
import pytest
import torch
from hivemind.averaging import DecentralizedAverager
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.allowlist import (
    Allowlist,
    add_volunteer,
    list_volunteers,
    parse_allowlist,
    remove_volunteer,
    secret_hash,
)
from coordinator.auth import (
    BANNED,
    MALFORMED,
    NOT_ALLOWLISTED,
    OVERSIZED,
    TokenAuthority,
    TokenIssueRefused,
    store_banned_names,
    token_response,
)
from coordinator.store import BanRow
from peer.config import PeerSettings, RunConfig
from peer.errors import UserError
from peer.run.members import member_validators, members_key, publish_member_record
from peer.run.tokens import public_key_from_text, sign_token, token_from_bytes, token_problem
from peer.swarm.authorizers import LocalTokenAuthorizer, dht_auth_rejections
from peer.swarm.dht import start_dht
from peer.swarm.membership import MembershipGate, authenticate_peer
from peer.swarm.metrics import make_validators
from peer.swarm.overrides.guard import AveragerGuard, GuardedAveragerMixin
from tests.coordinator.core.private_run import start_private_coordinator

RUN = "auth-run"


# ---------------------------------------------------------------------------------------------------------------
# the allowlist file
# ---------------------------------------------------------------------------------------------------------------


def test_allowlist_add_stores_only_the_hash_and_the_secret_checks(tmp_path):
    path = tmp_path / "allow.tsv"
    secret = add_volunteer(path, "alice")
    add_volunteer(path, "bob")
    assert len(secret) >= 40 and secret not in path.read_text()
    assert secret_hash(secret) in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    allowlist = Allowlist(path)
    assert allowlist.check("alice", secret)
    assert not allowlist.check("alice", secret + "x") and not allowlist.check("bob", secret)
    assert not allowlist.check("carol", secret)
    with pytest.raises(UserError, match="already in"):
        add_volunteer(path, "alice")
    remove_volunteer(path, "alice")
    assert [e.name for e in list_volunteers(path)] == ["bob"]
    with pytest.raises(UserError, match="not in"):
        remove_volunteer(path, "alice")


def test_allowlist_is_reread_when_the_file_changes_and_a_bad_edit_keeps_the_last_good_list(tmp_path):
    path = tmp_path / "allow.tsv"
    alice = add_volunteer(path, "alice")
    allowlist = Allowlist(path)
    bob = add_volunteer(path, "bob")  # e.g. `allowlist add` while the coordinator runs
    assert allowlist.check("bob", bob)
    remove_volunteer(path, "alice")
    assert not allowlist.check("alice", alice)
    path.write_text(path.read_text() + "carol\tnot-a-hash\n")
    assert allowlist.check("bob", bob) and allowlist.names() == ["bob"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("alice", "expected NAME<TAB>SHA256"),
        ("al ice\t" + "a" * 64, "bad volunteer name"),
        ("alice\t" + "z" * 64, "not 64 hex digits"),
        ("alice\t" + "a" * 64 + "\nalice\t" + "b" * 64, "listed twice"),
    ],
)
def test_bad_allowlist_lines_are_named(line, message):
    with pytest.raises(UserError, match=message):
        parse_allowlist("# header\n" + line + "\n", "allow.tsv")


def test_allowlist_cli_prints_the_join_line_once_and_edits_the_file(tmp_path, capsys):
    from coordinator.__main__ import main

    path = str(tmp_path / "allow.tsv")
    assert main(["allowlist", "add", "alice", "--file", path, "--url", "http://host:8080"]) == 0
    line = capsys.readouterr().out.splitlines()[-1].strip()
    assert line.startswith("python -m peer join --coordinator http://host:8080 --auth_key alice:")
    secret = line.split("alice:", 1)[1]
    assert Allowlist(path).check("alice", secret) and secret not in Path(path).read_text()
    assert main(["allowlist", "add", "alice", "--file", path]) == 2
    assert capsys.readouterr().err.strip() == f"error: alice is already in {path}; remove it first to issue a new key"
    assert main(["allowlist", "list", "--file", path]) == 0
    assert capsys.readouterr().out.startswith("alice\t")
    assert main(["allowlist", "remove", "alice", "--file", path]) == 0
    assert list_volunteers(path) == []


def test_missing_allowlist_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="allowlist file not found"):
        Allowlist(tmp_path / "nope.tsv")


# ---------------------------------------------------------------------------------------------------------------
# issuing tokens
# ---------------------------------------------------------------------------------------------------------------

AUTHORITY_KEY = RSAPrivateKey()
PEER_KEY = RSAPrivateKey()


@pytest.fixture
def authority(tmp_path):
    path = tmp_path / "allow.tsv"
    secrets = {name: add_volunteer(path, name) for name in ("alice", "mallory")}
    banned = {"mallory"}
    return TokenAuthority(RUN, AUTHORITY_KEY, Allowlist(path), lambda: set(banned), ttl=120), secrets


def test_an_allowlisted_volunteer_gets_a_token_bound_to_its_key_that_expires(authority):
    auth, secrets = authority
    before = get_dht_time()
    token = auth.issue_token("alice", secrets["alice"], PEER_KEY.get_public_key().to_bytes())
    assert token.username == "alice" and token.public_key == PEER_KEY.get_public_key().to_bytes()
    assert token_problem(token, AUTHORITY_KEY.get_public_key(), RUN) is None
    assert token_problem(token, AUTHORITY_KEY.get_public_key(), RUN, now=before + 121) == "expired_token"
    assert token_problem(token, AUTHORITY_KEY.get_public_key(), "another-run") == "bad_token"


@pytest.mark.parametrize(
    "name, secret_of, public_key, reason",
    [
        ("alice", "mallory", None, NOT_ALLOWLISTED),  # someone else's secret
        ("carol", "alice", None, NOT_ALLOWLISTED),  # not listed at all
        ("mallory", "mallory", None, BANNED),
        ("alice", "alice", b"ssh-rsa garbage", MALFORMED),
        ("", "alice", None, MALFORMED),
    ],
)
def test_refusals_carry_a_reason_and_one_line(authority, name, secret_of, public_key, reason):
    auth, secrets = authority
    with pytest.raises(TokenIssueRefused) as refused:
        auth.issue_token(name, secrets[secret_of], public_key or PEER_KEY.get_public_key().to_bytes())
    assert refused.value.reason == reason and "\n" not in str(refused.value)
    if reason == NOT_ALLOWLISTED:
        assert f"not in the allowlist of run {RUN!r}" in str(refused.value)


def test_token_endpoint_rules(authority):
    auth, secrets = authority

    def body(**fields):
        request = {"name": "alice", "key": secrets["alice"]}
        request["public_key"] = base64.b64encode(PEER_KEY.get_public_key().to_bytes()).decode()
        return json.dumps(request | fields).encode()

    assert token_response(None, RUN, body())[:1] == (404,) and token_response(None, RUN, body())[2] is None
    assert token_response(auth, RUN, None)[::2] == (413, OVERSIZED)
    assert token_response(auth, RUN, b"x" * 20000)[::2] == (413, OVERSIZED)
    assert token_response(auth, RUN, b"{not json")[::2] == (400, MALFORMED)
    assert token_response(auth, RUN, body(public_key="%%%"))[::2] == (400, MALFORMED)
    status, payload, reason = token_response(auth, RUN, body(key="wrong"))
    assert (status, reason) == (403, NOT_ALLOWLISTED) and "not in the allowlist" in payload["detail"]
    status, payload, reason = token_response(auth, RUN, body())
    assert status == 200 and reason is None
    token = token_from_bytes(base64.b64decode(payload["token"]))
    assert token_problem(token, public_key_from_text(payload["authority_public_key"]), RUN) is None


def test_banned_names_come_from_the_store_when_it_tracks_bans():
    class WithBans:
        def banned_names(self):
            return ["eve"]

    assert store_banned_names(WithBans())() == {"eve"}
    assert store_banned_names(object())() == set()


# ---------------------------------------------------------------------------------------------------------------
# a real private coordinator
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_coordinator(tmp_path_factory):
    root = tmp_path_factory.mktemp("private")
    allowlist = root / "allow.tsv"
    secret = add_volunteer(allowlist, "alice")
    coordinator = start_private_coordinator(RUN, root / "data", allowlist, token_ttl=300)
    url = f"http://127.0.0.1:{coordinator.http_port}"
    yield coordinator, url, secret
    coordinator.stop()


def rejected(url: str, reason: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(f'warmswarm_rejected_records_total{{reason="{reason}"}}'):
            return float(line.split()[-1])
    return 0.0


def peer_config(coordinator, url: str, auth_key: str | None) -> tuple[RunConfig, PeerSettings]:
    from peer.swarm.session import fetch_run

    run = fetch_run(url)
    peer = PeerSettings(
        initial_peers=run.initial_peers,
        host_maddrs=["/ip4/127.0.0.1/tcp/0"],
        auth_key=auth_key,
        authority_public_key=run.authority_public_key,
        coordinator_url=url,
    )
    return run.config, peer


@pytest.mark.timeout(300)  # fixture start included; generous for a loaded 2-core CI
def test_run_info_says_the_run_is_private_and_join_refuses_a_wrong_or_missing_key(private_coordinator, capsys):
    from peer.__main__ import main as peer_main

    coordinator, url, _ = private_coordinator
    run = httpx.get(f"{url}/api/v1/run", timeout=30).json()
    assert run["auth"]["required"] is True
    assert public_key_from_text(run["auth"]["authority_public_key"]).to_bytes().startswith(b"ssh-rsa ")
    assert "--auth_key" in coordinator.join_command

    before = rejected(url, NOT_ALLOWLISTED)
    capsys.readouterr()
    assert peer_main(["join", "--coordinator", url, "--auth_key", "alice:wrong-key", "--no_status"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: volunteer 'alice' with this key is not in the allowlist of run {RUN!r}: " + (
        "check --auth_key, or ask the organiser"
    )
    assert rejected(url, NOT_ALLOWLISTED) == before + 1

    env = os.environ.pop("WARMSWARM_AUTH_KEY", None)
    try:
        assert peer_main(["join", "--coordinator", url, "--no_status"]) == 2
    finally:
        if env is not None:
            os.environ["WARMSWARM_AUTH_KEY"] = env
    assert "is private: join with --auth_key" in capsys.readouterr().err


class GatedAverager(GuardedAveragerMixin, DecentralizedAverager):
    """A state donor whose ``rpc_download_state`` asks the gate (ROBUST's mixin over hivemind's averager)."""


@pytest.mark.timeout(300)  # fixture start included; generous for a loaded 2-core CI
def test_allowlisted_peer_joins_its_record_is_stored_and_the_gate_admits_only_members(private_coordinator, tmp_path):
    coordinator, url, secret = private_coordinator
    cfg, peer = peer_config(coordinator, url, f"alice:{secret}")
    signing = make_validators(cfg.run_id)
    private = authenticate_peer(cfg.run_id, peer, signing)
    assert private is not None and private.auth.token.username == "alice"
    dht = start_dht(peer, signing.validators, authorizer=private.authorizer(), startup_timeout=60)
    membership = donor = client_dht = client = None
    try:
        membership = private.join(dht)
        # both the coordinator's record and ours, as the coordinator's node sees them
        found = coordinator.dht.get(members_key(RUN), latest=True).value
        assert signing.public_key in found and coordinator.signing_public_key in found
        gate = MembershipGate(coordinator.dht, RUN, private.auth.authority)
        try:
            gate.refresh()
            assert gate.admits(dht.peer_id) and gate.admits(coordinator.dht.peer_id)
        finally:
            gate.close()

        # a state donor guarded by our gate; a second token holder without a member record asks for the state
        donor = GatedAverager(
            [torch.arange(4.0)], dht, prefix=f"{RUN}_gated", start=True, guard=AveragerGuard(gate=membership.gate)
        )
        outsider_key = RSAPrivateKey()
        outsider_token = coordinator.private.authority.sign("outsider", outsider_key.get_public_key().to_bytes())
        outsider_signature = RSASignatureValidator(outsider_key)
        client_dht = start_dht(
            PeerSettings(
                host_maddrs=["/ip4/127.0.0.1/tcp/0"],
                initial_peers=peer.initial_peers,
                identity_path=str(tmp_path / "outsider.id"),  # its member record proves this libp2p id
            ),
            [outsider_signature, *member_validators(RUN)],
            authorizer=LocalTokenAuthorizer(RUN, private.auth.authority, outsider_key, lambda _: outsider_token),
        )
        client = DecentralizedAverager(
            [torch.zeros(4)], client_dht, prefix=f"{RUN}_gated", client_mode=True, start=True
        )
        assert client.load_state_from_peers(timeout=60) is None  # refused (an empty answer), not timed out
        assert not membership.gate.admits(client_dht.peer_id)
        # the same peer with a member record (signed by its key, token bound to it) gets the state
        assert publish_member_record(client_dht, RUN, outsider_signature.local_public_key, outsider_token)
        loaded, deadline = None, time.monotonic() + 60
        while loaded is None and time.monotonic() < deadline:
            loaded = client.load_state_from_peers(timeout=10)
        assert loaded is not None and torch.equal(loaded[1][0], torch.arange(4.0))

        # a ban of alice's libp2p id (whatever display name she picked) refuses her next token: the name comes
        # from the token in her member record
        ban = BanRow(dht.peer_id.to_base58(), "", "", "sign flip", reporters=2, time=time.time())
        coordinator.store.add_ban(ban)
        coordinator.private.tick()
        with pytest.raises(TokenIssueRefused, match="banned"):
            coordinator.private.authority.issue_token("alice", secret, outsider_key.get_public_key().to_bytes())
    finally:
        for averager in (client, donor):
            if averager is not None:
                averager.shutdown()
        if client_dht is not None:
            client_dht.shutdown()
        if membership is not None:
            membership.stop()
        dht.shutdown()


@pytest.mark.timeout(300)  # fixture start included; generous for a loaded 2-core CI
def test_a_forged_token_at_the_coordinators_node_is_refused_and_shows_in_metrics(private_coordinator):
    coordinator, url, _ = private_coordinator
    forger = RSAPrivateKey()
    fake_authority = RSAPrivateKey()
    forged = sign_token(fake_authority, RUN, "alice", forger.get_public_key().to_bytes(), get_dht_time() + 300)
    before = rejected(url, "bad_token")
    with pytest.raises(UserError, match="cannot reach any initial peer"):
        start_dht(
            PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=coordinator.initial_peers),
            authorizer=LocalTokenAuthorizer(RUN, fake_authority.get_public_key(), forger, lambda _: forged),
            startup_timeout=30,
        )
    assert dht_auth_rejections(coordinator.dht).get("bad_token", 0) > 0
    coordinator.private.tick()  # what the coordinator's wait loop does every monitor interval
    assert rejected(url, "bad_token") > before
