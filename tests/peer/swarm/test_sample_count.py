"""A volunteer's samples count across sessions (``peer.swarm.sample_count``): each session counts on from the last
one's saved count, per run, and the count is on disk before a record carries it."""

from __future__ import annotations

import json
import logging

from peer.swarm.sample_count import SampleCount, sample_count_path


def test_each_session_counts_on_from_the_last_and_runs_keep_their_own_counts(tmp_path):
    path = sample_count_path(tmp_path / "peer.id")
    assert path == tmp_path / "peer.id.samples.json"
    first = SampleCount(path, "run-a")
    assert (first.base, first.total(0), first.total(48)) == (0, 0, 48)
    assert json.loads(path.read_text()) == {"run-a": 48}  # saved before the record with 48 goes out
    other_run = SampleCount(path, "run-b")
    assert other_run.total(8) == 8
    second = SampleCount(path, "run-a")  # a restart: this session's count starts at 0 again
    assert (second.base, second.total(0), second.total(16)) == (48, 48, 64)
    assert json.loads(path.read_text()) == {"run-a": 64, "run-b": 8}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peer.id.samples.json"]


def test_an_unreadable_count_starts_from_zero_with_a_warning(tmp_path, caplog):
    path = sample_count_path(tmp_path / "peer.id")
    for junk in ("{not json", '{"run": -5}', "[1, 2]"):
        path.write_text(junk)
        with caplog.at_level(logging.WARNING, logger="peer.swarm.sample_count"):
            count = SampleCount(path, "run")
        assert count.base == 0 and "counting from 0" in caplog.text
        caplog.clear()
    assert count.total(4) == 4 and json.loads(path.read_text()) == {"run": 4}


def test_a_restarted_volunteer_does_not_replay_its_first_sessions_data_order(tmp_path):
    """The data order is seeded from the record key, which ``--identity_path`` keeps: a second session seeded from
    the key alone would train on the same batches again. A fresh volunteer's seed stays its key alone."""
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.utils.crypto import RSAPrivateKey

    from peer.data import seed_from_bytes
    from peer.swarm.metrics import RecordSigning

    signature = RSASignatureValidator(RSAPrivateKey())
    path = sample_count_path(tmp_path / "peer.id")
    first = RecordSigning(signature, [], SampleCount(path, "run"))
    assert first.data_seed_material == signature.local_public_key
    first.count.total(48)  # the first session trained 48 samples
    second = RecordSigning(signature, [], SampleCount(path, "run"))
    third = RecordSigning(signature, [], SampleCount(path, "run"))
    assert seed_from_bytes(second.data_seed_material) != seed_from_bytes(first.data_seed_material)
    assert second.data_seed_material == third.data_seed_material  # deterministic for one saved count
    assert RecordSigning(signature, []).data_seed_material == signature.local_public_key
