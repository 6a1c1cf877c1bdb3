"""Bans at the coordinator: the majority rule, the store (survives a restart), the metrics, and the signed ban list
round trip through real DHT nodes to a peer's ``BanGate`` (which ignores a ban list forged under another key)."""

import time

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.bans import BanCourt, counted_reports, decide_bans
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import BanRow, PeerObservation, Store
from peer.run.records import BanList, BanReport, LocalMetrics, MetricsSchema, bans_key, reports_key
from peer.run.revocations import Revoked
from peer.run.tokens import key_fingerprint
from peer.swarm.bans import BanGate, RejectionLedger, ban_validators, fetch_reports
from peer.swarm.round_evidence import RoundOutcomes
from tests.coordinator.core.coordinator_node import LOOPBACK, coordinator_node

RUN = "bans-test"


def _report(reporter: str, banned: dict[str, str], counts: dict[str, int] | None = None) -> BanReport:
    return BanReport(
        peer_id=reporter,
        rejected={p: 2 for p in banned},
        banned=banned,
        counts=counts or {},
        time=time.time(),
    )


def test_majority_of_live_peers_and_at_least_two_reporters():
    live = {"A", "B", "C", "X"}
    two_of_three = {"A": _report("A", {"X": "clipped"}), "B": _report("B", {"X": "non_finite"})}
    (verdict,) = decide_bans(two_of_three, live, already=set())
    assert (verdict.peer_id, verdict.reporters, verdict.voters) == ("X", 2, 3)
    assert "reported by 2 of 3 peers (clipped)" == verdict.reason
    assert decide_bans({"A": _report("A", {"X": "clipped"})}, live, set()) == []  # 1 of 3: not enough
    # the attacker (and one accomplice it does not have) cannot ban an honest peer alone
    assert decide_bans({"X": _report("X", {"A": "clipped"})}, live, set()) == []
    # a 2-peer swarm: the two reports are symmetric, no one is banned by the coordinator
    both = {"A": _report("A", {"X": "clipped"}), "X": _report("X", {"A": "clipped"})}
    assert decide_bans(both, {"A", "X"}, set()) == []
    # 3 peers, one attacker: the two honest ones are 2 of 2 voters
    honest = {"A": _report("A", {"X": "c"}), "B": _report("B", {"X": "c"}), "X": _report("X", {"A": "c"})}
    assert [v.peer_id for v in decide_bans(honest, {"A", "B", "X"}, set())] == ["X"]
    # a banned reporter's reports no longer count, and the banned are not judged again
    assert decide_bans(honest, {"A", "B", "X"}, already={"X"}) == []
    # 5 live peers: 2 reports are not a majority of the 4 voters
    assert decide_bans(two_of_three, {"A", "B", "C", "D", "X"}, set()) == []


def test_reports_of_revoked_reporters_do_not_count():
    key = RSAPrivateKey().get_public_key().to_bytes()
    subkey = RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", key)
    reports = {subkey: _report("A", {"X": "c"}), b"[owner:other]": _report("B", {"X": "c"})}
    assert set(counted_reports(reports, Revoked())) == set(reports)
    assert set(counted_reports(reports, Revoked(keys=frozenset({key_fingerprint(key)})))) == {b"[owner:other]"}
    assert set(counted_reports(reports, Revoked(peer_ids=frozenset({"B"})))) == {subkey}


def test_bans_survive_a_restart_and_mark_the_volunteer(tmp_path):
    path = tmp_path / "c.db"
    with Store(path) as store:
        store.open_run(RUN, {"run_id": RUN})
        store.observe_peer(PeerObservation("aa" * 32, "mallory", 1, 10, 1.0, 2.0, time.time()))
        store.add_ban(BanRow("QmX", "aa" * 32, "mallory", "reported by 3 of 3 peers", 3, 1.0))
        store.add_ban(BanRow("QmX", "aa" * 32, "mallory", "a later verdict is ignored", 2, 2.0))
        store.add_ban(BanRow("QmY", "", "", "metrics not seen yet", 2, 3.0))
        store.observe_peer(PeerObservation("bb" * 32, "trudy", 1, 10, 1.0, 2.0, time.time()))
        store.identify_ban("QmY", "bb" * 32, "trudy")  # its metrics arrive after the verdict
        store.record_contribution_rejections("r1", {"clipped": 4, "non_finite": 1})
        store.record_contribution_rejections("r1", {"clipped": 3})  # a stale report does not lower the total
        store.record_contribution_rejections("r2", {"clipped": 2})
    with Store(path) as store:
        store.open_run(RUN, {"run_id": RUN})
        assert [(b.peer_id, b.reason) for b in store.bans()] == [
            ("QmX", "reported by 3 of 3 peers"),
            ("QmY", "metrics not seen yet"),
        ]
        assert store.banned_names() == {"mallory", "trudy"} and {b.peer_id for b in store.bans()} == {"QmX", "QmY"}
        rows = {p.name: p for p in store.peers()}
        assert rows["mallory"].banned and rows["mallory"].ban_reason == "reported by 3 of 3 peers"
        assert rows["trudy"].banned and rows["trudy"].ban_reason == "metrics not seen yet"
        assert store.rejected_contribution_counts() == {"clipped": 6, "non_finite": 1}
        text = CoordinatorMetrics(store).render().decode()
        assert "warmswarm_banned_peers 2.0" in text
        assert 'warmswarm_rejected_contributions_total{reason="clipped"} 6.0' in text


def _peer_dht(initial: list[str]) -> tuple[hivemind.DHT, bytes]:
    """A peer's DHT node with its own key (hivemind's default key is per process: every node here would share it)."""
    signature = RSASignatureValidator(RSAPrivateKey())
    validators = [SchemaValidator(MetricsSchema, prefix=RUN), signature, *ban_validators(RUN)]
    dht = hivemind.DHT(initial_peers=initial, host_maddrs=LOOPBACK, record_validators=validators, start=True)
    return dht, signature.local_public_key


def _in(seconds: float) -> float:
    return get_dht_time() + seconds


def _wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.3)


@pytest.mark.timeout(240)
def test_reports_to_signed_ban_list_to_peer_gate_through_real_dht(tmp_path):
    with coordinator_node(tmp_path / "c.db", RUN) as node:
        store, coordinator, signature, initial, dhts = node.store, node.dht, node.signature, node.initial, node.dhts
        (a, a_key), (b, b_key), (x, x_key) = (_peer_dht(initial) for _ in range(3))
        dhts += [a, b, x]
        ids = {name: str(d.peer_id) for name, d in (("a", a), ("b", b), ("x", x))}

        # the honest peers' ledgers see X non-finite twice in a row and publish their signed reports
        for dht, key in ((a, a_key), (b, b_key)):
            ledger = RejectionLedger(ban_after=2)
            for _ in range(2):
                ledger.record(RoundOutcomes("gradients", {ids["x"]: "non_finite", str(dht.peer_id): "accepted"}))
            dht.store(reports_key(RUN), ledger.report(str(dht.peer_id)).dict(), _in(60), subkey=key)
        # X accuses A, and forges a "ban list" under its own key
        x.store(reports_key(RUN), _report(ids["x"], {ids["a"]: "clipped"}).dict(), _in(60), subkey=x_key)
        forged = BanList(bans=[{"peer_id": ids["a"], "reason": "forged"}], time=1.0)
        x.store(bans_key(RUN), forged.dict(), _in(60), subkey=x_key)

        def record(name):
            return LocalMetrics(
                step=1, samples_per_second=1.0, samples_accumulated=0, samples_total=8, loss=2.0, mini_steps=1,
                time=time.time(), peer_name=name, peer_id=ids[name],
            )  # fmt: skip

        alive = {f"store-{n}": record(n) for n in ids}
        # once A is revoked (removed from the allowlist) its report no longer counts: B alone bans no one
        _wait(lambda: len(fetch_reports(coordinator, RUN)) == 3)
        a_revoked = Revoked(keys=frozenset({key_fingerprint(a_key[len(b"[owner:") : -1])}))
        assert (
            BanCourt(coordinator, store, RUN, signature.local_public_key, revoked=lambda: a_revoked).judge(alive) == []
        )
        assert store.bans() == []
        court = BanCourt(coordinator, store, RUN, signature.local_public_key)
        _wait(lambda: len(court.judge(alive)) > 0 or store.bans())
        (ban,) = store.bans()
        assert (ban.peer_id, ban.name, ban.store_peer_id, ban.reporters) == (ids["x"], "x", "store-x", 2)
        assert ban.reason.startswith("reported by 2 of 2 peers (non_finite gradients in 2 rounds in a row")
        assert store.rejected_contribution_counts() == {"non_finite": 4}  # 2 rounds at each honest reporter

        # A's gate reads the coordinator's signed list; X's forged list under its own key is ignored
        gate = BanGate(a, RUN, a_key, authority=signature.local_public_key)
        _wait(lambda: (gate.refresh(), not gate.admits(x.peer_id))[1])
        assert gate.admits(b.peer_id) and gate.admits(a.peer_id)
        assert gate.why_not(x.peer_id).startswith("banned (by the coordinator: reported by 2 of 2 peers")
        # the same gate trusting X's key would obey the forgery: the authority key from the coordinator is the defence
        fooled = BanGate(a, RUN, a_key, authority=x_key)
        fooled.refresh()
        assert not fooled.admits(a.peer_id)
