"""The monitor against real hivemind DHT nodes on loopback: honest signed records aggregate, forged and malformed
ones are rejected by the coordinator's node and counted by reason."""

import time

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.monitor import REASON_BAD_SIGNATURE, REASON_MALFORMED, Monitor, aggregate, volunteer_id
from coordinator.store import Store
from peer.run.records import LocalMetrics, MetricsSchema, metrics_key
from tests.coordinator.core.coordinator_node import LOOPBACK, coordinator_node, run_store

RUN = "monitor-test"


def _metrics(step, sps, samples_total, loss, name, t: float | None = None) -> dict:
    """A peer's record (written at ``t``, by default now in DHT time)."""
    return LocalMetrics(
        step=step,
        samples_per_second=sps,
        samples_accumulated=0,
        samples_total=samples_total,
        loss=loss,
        mini_steps=1,
        time=get_dht_time() if t is None else float(t),
        peer_name=name,
    ).dict()


def test_aggregate_uses_max_step_and_finite_mean_loss():
    a = LocalMetrics(
        step=3, samples_per_second=1.5, samples_accumulated=0, samples_total=0, loss=2.0, mini_steps=0, time=0.0
    )
    b = a.copy(update=dict(step=5, loss=float("nan")))
    c = a.copy(update=dict(step=4, loss=4.0))
    assert aggregate([a, b, c]) == (5, 3.0)
    assert aggregate([]) == (0, None)


@pytest.mark.timeout(180)
def test_monitor_with_real_dht_aggregates_signed_records_and_counts_rejections(tmp_path):
    with coordinator_node(tmp_path / "c.db", RUN) as node:
        store, coordinator, initial, dhts = node.store, node.dht, node.initial, node.dhts

        def honest_peer():
            sig = RSASignatureValidator(RSAPrivateKey())
            dht = hivemind.DHT(
                initial_peers=initial,
                host_maddrs=LOOPBACK,
                record_validators=[SchemaValidator(MetricsSchema, prefix=RUN), sig],
                start=True,
            )
            dhts.append(dht)
            return dht, sig.local_public_key

        alice, alice_key = honest_peer()
        bob, bob_key = honest_peer()
        expiration = get_dht_time() + 120
        assert alice.store(metrics_key(RUN), _metrics(10, 20.0, 640, 3.0, "alice"), expiration, subkey=alice_key)
        assert bob.store(metrics_key(RUN), _metrics(12, 30.0, 1000, 5.0, "bob"), expiration, subkey=bob_key)

        monitor = Monitor(coordinator, store, RUN, alive_window=60, interval=1)
        first = monitor.poll()
        # one point of the samples counter is no rate yet (and what the peers say about themselves is not used)
        assert (first.global_step, first.alive_peers, first.samples_per_second, first.loss) == (12, 2, 0.0, 4.0)

        # an attacker with no validators writes under bob's key (unsigned: forged) ...
        mallory = hivemind.DHT(initial_peers=initial, host_maddrs=LOOPBACK, start=True)
        dhts.append(mallory)
        forged = _metrics(10_000, 1e6, 10**9, 0.0, "bob")
        mallory.store(metrics_key(RUN), forged, expiration, subkey=bob_key)
        # ... and a properly signed record of its own that breaks the schema (malformed)
        eve_sig = RSASignatureValidator(RSAPrivateKey())
        eve = hivemind.DHT(initial_peers=initial, host_maddrs=LOOPBACK, record_validators=[eve_sig], start=True)
        dhts.append(eve)
        eve.store(metrics_key(RUN), {"step": "lots", "loss": 0.0}, expiration, subkey=eve_sig.local_public_key)

        # honest progress: both peers trained more (a replacement must expire later than what it replaces)
        expiration = get_dht_time() + 180
        assert alice.store(metrics_key(RUN), _metrics(14, 20.0, 1280, 2.0, "alice"), expiration, subkey=alice_key)
        assert bob.store(metrics_key(RUN), _metrics(14, 30.0, 1960, 4.0, "bob"), expiration, subkey=bob_key)

        deadline = time.time() + 30
        counts = {}
        while time.time() < deadline:
            snap = monitor.poll()
            counts = store.rejected_counts()
            if counts.get(REASON_BAD_SIGNATURE) and counts.get(REASON_MALFORMED) and snap.global_step == 14:
                break
            time.sleep(0.5)
        assert counts.get(REASON_BAD_SIGNATURE, 0) >= 1, counts
        assert counts.get(REASON_MALFORMED, 0) >= 1, counts
        assert (snap.global_step, snap.alive_peers, snap.loss) == (14, 2, 3.0)
        # the counter went from 640 + 1000 to 1280 + 1960 samples between the first pass and this one
        assert snap.samples_per_second == pytest.approx(1600 / (snap.time - first.time))

        peers = {p.name: p for p in store.peers()}
        assert set(peers) == {"alice", "bob"}  # neither the forger's nor the malformed record made a peer
        assert peers["alice"].samples == 1280 and peers["bob"].samples == 1960
        assert peers["bob"].peer_id == volunteer_id(bob_key)
        assert store.progress().global_step == 14
    # the store survives reopen with everything the monitor wrote
    with Store(tmp_path / "c.db", readonly=True) as reader:
        assert reader.progress().global_step == 14
        assert {p.name for p in reader.peers()} == {"alice", "bob"}
        assert reader.rejected_counts() == counts
        assert len(reader.history()) >= 2


class _ServedRecords(Monitor):
    """The monitor's own bookkeeping under test: records come from a dict instead of a DHT get (the test above
    runs the real DHT)."""

    def __init__(self, store: Store, **kwargs):
        super().__init__(None, store, RUN, **kwargs)
        self.served: dict[bytes, dict] = {}

    def _fetch(self):
        return dict(self.served)

    def _collect_rejections(self):
        return {}


def _record_at(t: float, step: int, name: str) -> dict:
    return _metrics(step, 1.0, step, 1.0, name, t)


def test_peers_gone_longer_than_forget_after_are_dropped_and_their_stale_record_does_not_bring_them_back(tmp_path):
    store = run_store(tmp_path / "c.db", RUN)
    monitor = _ServedRecords(store, alive_window=60, forget_after=600)
    stayer, leaver = b"[owner:stayer]", b"[owner:leaver]"
    monitor.served = {stayer: _record_at(0, 1, "stayer"), leaver: _record_at(0, 1, "leaver")}
    assert monitor.poll(now=0).alive_peers == 2 and monitor.tracked_peers == 2
    # the leaver's record stays in the DHT unchanged (not yet expired); the stayer keeps refreshing
    for t in range(30, 601, 30):
        monitor.served[stayer] = _record_at(t, t, "stayer")
        snap = monitor.poll(now=t)
    assert snap.alive_peers == 1 and monitor.tracked_peers == 2  # gone 600 s: not yet forgotten
    monitor.served[stayer] = _record_at(630, 630, "stayer")
    assert monitor.poll(now=630).alive_peers == 1 and monitor.tracked_peers == 1
    monitor.served[stayer] = _record_at(660, 660, "stayer")
    assert monitor.poll(now=660).alive_peers == 1 and monitor.tracked_peers == 1  # the stale record: skipped
    monitor.served[leaver] = _record_at(690, 2, "leaver")  # it comes back with a new record
    assert monitor.poll(now=690).alive_peers == 2 and monitor.tracked_peers == 2


def test_forget_after_must_exceed_the_alive_window(tmp_path):
    with pytest.raises(ValueError, match="must exceed alive_window"):
        _ServedRecords(Store(tmp_path / "c.db", alive_window=60), alive_window=60, forget_after=60)


def _progress(t: float, samples_total: int, name: str, claimed_rate: float = 1e6) -> dict:
    """A record at time ``t``; ``claimed_rate`` is the peer's own samples/s, which the monitor must not use."""
    return _metrics(samples_total // 100, claimed_rate, samples_total, 1.0, name, t)


def test_samples_per_second_is_the_rate_of_the_samples_counter_over_the_window(tmp_path):
    """Two peers make 10 and 30 samples/s (while claiming a million); records every 5 s, a pass every 5 s."""
    store = run_store(tmp_path / "c.db", RUN)
    monitor = _ServedRecords(store, alive_window=60, rate_window=60)
    a, b = b"[owner:a]", b"[owner:b]"
    snaps = []
    for t in range(0, 181, 5):
        monitor.served = {a: _progress(t, 10 * t, "a"), b: _progress(t, 30 * t, "b")}
        snaps.append(monitor.poll(now=t))
    assert snaps[0].samples_per_second == 0.0  # one point: no rate yet
    assert all(s.samples_per_second == pytest.approx(40.0) for s in snaps[1:])
    history = store.history()
    assert [h.samples_per_second for h in history[1:]] == pytest.approx([40.0] * (len(history) - 1))
    # the same as a rate() over the counter the store exports: (total now - total a window ago) / window
    assert (history[-1].samples_total - history[-13].samples_total) / 60 == pytest.approx(40.0)
    assert {p.name: p.samples_per_second for p in store.peers(now=180)} == pytest.approx({"a": 10.0, "b": 30.0})
    assert store.progress(now=180).samples_per_second == pytest.approx(40.0)


def test_a_peer_that_left_drops_out_of_the_rates_and_the_eta_needs_a_live_peer(tmp_path):
    store = run_store(tmp_path / "c.db", RUN, alive_window=30, total_steps=10_000)
    monitor = _ServedRecords(store, alive_window=30, rate_window=20)
    stayer, leaver = b"[owner:stayer]", b"[owner:leaver]"
    for t in range(0, 61, 5):
        monitor.served = {stayer: _progress(t, 10 * t, "stayer"), leaver: _progress(t, 30 * t, "leaver")}
        monitor.poll(now=t)
    assert store.progress(now=60).samples_per_second == pytest.approx(40.0)
    assert store.progress(now=60).eta_seconds is not None
    # the leaver's last record stays in the DHT, unchanged; the stayer goes on
    for t in range(65, 121, 5):
        monitor.served[stayer] = _progress(t, 10 * t, "stayer")
        snap = monitor.poll(now=t)
        rates = {p.name: p.samples_per_second for p in store.peers(now=t)}
        if t >= 60 + 20:  # a whole window after the leaver's last samples, before it stops counting as alive
            assert snap.samples_per_second == pytest.approx(10.0) and rates["leaver"] == 0.0, t
        if t > 60 + 30:
            assert snap.alive_peers == 1, t
    assert {p.name: (p.alive, p.samples_per_second) for p in store.peers(now=120)} == {
        "stayer": (True, pytest.approx(10.0)),
        "leaver": (False, 0.0),
    }
    # now the stayer leaves too: no rate, and no ETA from the steps it took before
    for t in range(125, 181, 5):
        snap = monitor.poll(now=t)
    assert (snap.alive_peers, snap.samples_per_second) == (0, 0.0)
    assert {p.samples_per_second for p in store.peers(now=180)} == {0.0}
    p = store.progress(now=180)
    assert (p.alive_peers, p.samples_per_second, p.eta_seconds) == (0, 0.0, None)


def test_a_restarted_peer_with_the_same_key_keeps_one_row_and_its_rate_has_no_dip_or_spike(tmp_path):
    store = run_store(tmp_path / "c.db", RUN)
    monitor = _ServedRecords(store, alive_window=60, rate_window=30)
    key = b"[owner:volunteer]"
    for t in range(0, 61, 5):
        monitor.served = {key: _progress(t, 20 * t, "v")}
        monitor.poll(now=t)
    for t in range(65, 121, 5):  # restarted at once: its count starts again from 0
        monitor.served = {key: _progress(t, 20 * (t - 60), "v")}
        snap = monitor.poll(now=t)
        assert snap.samples_per_second == pytest.approx(20.0), t
    (row,) = store.peers(now=120)
    assert row.samples == 20 * 60 + 20 * 60


def test_a_restarted_coordinator_goes_on_with_the_rate_from_its_history(tmp_path):
    store = run_store(tmp_path / "c.db", RUN)
    key = b"[owner:p]"
    before = _ServedRecords(store, alive_window=60, rate_window=60)
    for t in range(0, 121, 5):
        before.served = {key: _progress(t, 25 * t, "p")}
        before.poll(now=t)
    after = _ServedRecords(store, alive_window=60, rate_window=60)  # a new process on the same store
    after.served = {key: _progress(130, 25 * 130, "p")}
    assert after.poll(now=130).samples_per_second == pytest.approx(25.0)
    assert store.peers(now=130)[0].samples == 25 * 130


def test_the_rate_window_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="rate_window"):
        _ServedRecords(Store(tmp_path / "c.db", alive_window=60), alive_window=60, rate_window=0)


def test_a_record_naming_another_volunteers_libp2p_id_gets_a_row_of_its_own(tmp_path):
    """Rows are keyed by the signing key (which the DHT's signature check binds a record to), never by the libp2p id
    a record states about itself: anyone can write any id into a record of their own."""
    store = run_store(tmp_path / "c.db", RUN)
    monitor = _ServedRecords(store, alive_window=60)
    claim = dict(peer_id="12D3KooWFZNX2sY4Y6MteSWdzFB3mVAERrqCVVpHuXxjMJ2wzEoT")
    honest, impostor = _progress(0, 100, "honest"), _progress(0, 10**6, "impostor")
    monitor.served = {b"[owner:honest]": {**honest, **claim}, b"[owner:impostor]": {**impostor, **claim}}
    monitor.poll(now=0)
    rows = {p.name: (p.peer_id, p.samples) for p in store.peers(now=0)}
    assert rows == {
        "honest": (volunteer_id(b"[owner:honest]"), 100),
        "impostor": (volunteer_id(b"[owner:impostor]"), 10**6),
    }
