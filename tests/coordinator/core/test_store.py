"""The store keeps a run's history, contribution and checkpoints across reopen, and credits contribution honestly."""

import pytest

from coordinator.store import CheckpointRow, PeerObservation, Store, credited_samples
from peer.errors import UserError
from peer.run.checkpoint_manifest import FileDigest


def _obs(peer_id, t, samples_total, step=1, name="", loss=2.0, sps=10.0):
    return PeerObservation(
        peer_id=peer_id, name=name, step=step, samples_total=samples_total, samples_per_second=sps, loss=loss, time=t
    )


def test_contribution_credits_increments_restarts_and_only_alive_time(tmp_path):
    with Store(tmp_path / "c.db", alive_window=60) as store:
        store.open_run("r", {"run_id": "r"}, total_steps=100, now=0.0)
        assert store.observe_peer(_obs("aa" * 32, 100.0, 50, name="alice")) == 50  # first sight: all its samples
        assert store.observe_peer(_obs("aa" * 32, 130.0, 80, name="alice")) == 80  # +30 samples, +30 s online
        # restarted after a long gap (its count went down): +20, +0 s
        assert store.observe_peer(_obs("aa" * 32, 1000.0, 20, name="alice")) == 100
        store.observe_peer(_obs("bb" * 32, 130.0, 500))
        store.observe_peer(_obs("bb" * 32, 140.0, 700))
        (b, a) = store.peers(now=1010.0)
        assert (a.name, a.samples, a.seconds_online, a.alive) == ("alice", 100, 30.0, True)
        assert (b.name, b.samples, b.seconds_online, b.alive) == ("bb" * 4, 700, 10.0, False)
        assert b.short_id == "bb" * 4
        assert store.samples_total() == 800


def test_a_restart_is_a_count_that_went_down():
    assert credited_samples(400, 650) == 250  # the same session went on
    assert credited_samples(400, 120) == 120  # restarted: everything since is new
    assert credited_samples(400, 400) == 0


def test_rates_of_peers_that_are_not_alive_read_zero(tmp_path):
    with Store(tmp_path / "c.db", alive_window=60) as store:
        store.open_run("r", {"run_id": "r"})
        store.observe_peer(_obs("aa" * 32, 100.0, 50, sps=None))
        store.observe_peer(_obs("bb" * 32, 100.0, 50, sps=None))
        store.set_peer_rates({"aa" * 32: 12.5, "bb" * 32: 7.0})
        store.observe_peer(_obs("aa" * 32, 150.0, 80, sps=None))  # None keeps the monitor's rate
        rates = {p.peer_id[:2]: (p.alive, p.samples_per_second) for p in store.peers(now=200.0)}
        assert rates == {"aa": (True, 12.5), "bb": (False, 0.0)}


def test_progress_is_live_only_while_the_monitor_updates_it_and_a_peer_is_alive(tmp_path):
    with Store(tmp_path / "c.db", alive_window=60) as store:
        store.open_run("r", {"run_id": "r"}, total_steps=1000, now=0.0)
        for t in range(0, 301, 30):
            store.record_progress(global_step=t // 10, alive_peers=2, samples_per_second=64.0, loss=1.0, now=t)
        p = store.progress(now=310.0)
        assert (p.samples_per_second, p.eta_seconds) == (64.0, pytest.approx((1000 - 30) / 0.1))
        stale = store.progress(now=361.0)  # the monitor stopped: nothing says the swarm still trains
        assert (stale.samples_per_second, stale.eta_seconds, stale.global_step) == (0.0, None, 30)
        store.record_progress(global_step=30, alive_peers=0, samples_per_second=0.0, loss=None, now=330.0)
        assert store.progress(now=331.0).eta_seconds is None  # every peer gone: a step rate from history is no ETA
        for t in range(360, 1000, 30):  # peers alive, but stuck at step 30 for longer than the ETA window
            store.record_progress(global_step=30, alive_peers=2, samples_per_second=0.0, loss=1.0, now=t)
        assert store.progress(now=990.0).eta_seconds is None


def test_progress_history_eta_and_rejections_survive_reopen(tmp_path):
    path = tmp_path / "c.db"
    with Store(path) as store:
        store.open_run("r", {"run_id": "r", "x": 1}, total_steps=110, now=0.0)
        store.observe_peer(_obs("aa" * 32, 1.0, 0))
        store.observe_peer(_obs("aa" * 32, 2.0, 64))
        store.record_progress(global_step=10, alive_peers=1, samples_per_second=32.0, loss=3.0, now=100.0)
        store.record_progress(global_step=5, alive_peers=1, samples_per_second=30.0, loss=2.5, now=110.0)
        store.record_progress(global_step=20, alive_peers=2, samples_per_second=40.0, loss=2.0, now=120.0)
        assert store.samples_total() == 64
        store.add_rejected({"malformed": 2, "bad_signature": 1})
        store.add_rejected({"malformed": 1, "bad_signature": 0})
        files = [FileDigest("config.json", 10, "ab" * 32)]
        store.record_checkpoint(CheckpointRow("ckpt-000020", 20, 121.0, files, 0.5))
        store.record_checkpoint(CheckpointRow("ckpt-000000", 0, 50.0, files, 0.4))
    with Store(path, readonly=True) as reader:
        p = reader.progress(now=120.0)
        # the global step never goes backwards, even if a lagging peer reports an older one
        assert (p.run_id, p.global_step, p.alive_peers, p.loss, p.samples_total) == ("r", 20, 2, 2.0, 64)
        assert p.samples_per_second == 40.0
        assert p.eta_seconds == pytest.approx((110 - 20) / (10 / 20))
        assert p.last_checkpoint_step == 20
        assert [h.step for h in reader.history()] == [10, 10, 20]
        assert [h.time for h in reader.history(since=105.0)] == [110.0, 120.0]
        assert reader.rejected_counts() == {"malformed": 3, "bad_signature": 1}
        assert [c.name for c in reader.checkpoints()] == ["ckpt-000000", "ckpt-000020"]
        assert reader.checkpoints()[1].size_bytes == 10
        assert reader.run_config() == {"run_id": "r", "x": 1}
    with Store(path) as store:  # reopening the same run keeps everything and goes on appending
        store.open_run("r", {"run_id": "r", "x": 1}, total_steps=110)
        store.remove_checkpoint("ckpt-000000")
        assert [c.name for c in store.checkpoints()] == ["ckpt-000020"]
        assert len(store.history()) == 3


def test_ban_and_clear_errors(tmp_path):
    with pytest.raises(UserError, match="no coordinator database"):
        Store(tmp_path / "missing.db", readonly=True)
    with Store(tmp_path / "c.db") as store:
        with pytest.raises(UserError, match="no run recorded"):
            store.progress()
        store.open_run("r", {})
        store.observe_peer(_obs("cc" * 32, 1.0, 0))
        store.set_banned("cc" * 32, reason="non-finite contributions")
        (peer,) = store.peers()
        assert peer.banned and peer.ban_reason == "non-finite contributions"
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="cannot open coordinator database"):
        Store(tmp_path / "junk.db")


def test_evaluations_are_recorded_whole_replace_earlier_ones_and_outlive_their_checkpoint(tmp_path):
    from coordinator.store import CheckpointRow, EvaluationScore

    path = tmp_path / "c.sqlite"
    with Store(path) as store:
        store.open_run("r", {"run_id": "r"})
        for step in (10, 20):
            store.record_checkpoint(CheckpointRow(f"ckpt-{step:06d}", step, 1.0))
        assert store.record_evaluation_failure("ckpt-000020", 20, "worker exited with code -9") == 1
        assert store.record_evaluation_failure("ckpt-000020", 20, "no space left on device") == 2
        lee = EvaluationScore("ckpt-000010", 10, "checkpoint", "lee", "spearman", 0.61, 0.02, [0, 1], [0.6, 0.62])
        nan = EvaluationScore("ckpt-000010", 10, "checkpoint", "heldout", "disc_auc", float("nan"), 0.0)
        store.record_evaluation("ckpt-000010", 10, [lee, nan], seconds=12.5, now=5.0)
        assert store.latest_evaluation()[0].checkpoint == "ckpt-000010"  # 20 failed: not evaluated
        better = EvaluationScore("ckpt-000010", 10, "checkpoint", "lee", "spearman", 0.7, 0.0, [0], [0.7])
        store.record_evaluation("ckpt-000010", 10, [better], seconds=1.0)
        store.remove_checkpoint("ckpt-000010")  # pruned: its scores stay, they are the run's history
    with Store(path) as store:  # and survive a restart
        assert store.evaluations() == [better]
        attempts = store.evaluation_attempts()
        assert attempts["ckpt-000010"].done and attempts["ckpt-000010"].seconds == 1.0
        twenty = attempts["ckpt-000020"]
        assert not twenty.done and twenty.attempts == 2 and twenty.error == "no space left on device"
        ok = EvaluationScore("ckpt-000020", 20, "checkpoint", "lee", "spearman", 0.8, 0.0, [0], [0.8])
        store.record_evaluation("ckpt-000020", 20, [ok], seconds=2.0)
        assert store.latest_evaluation() == [ok] and store.evaluations("ckpt-000010") == [better]
    with Store(path) as store:
        nan = EvaluationScore("ckpt-000030", 30, "checkpoint", "heldout", "disc_auc", float("nan"), None)
        store.record_evaluation("ckpt-000030", 30, [nan], seconds=1.0)
        assert store.evaluations("ckpt-000030")[0].mean is None  # NaN is stored as "not a number", explicitly
