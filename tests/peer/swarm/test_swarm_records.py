"""Signed, schema-validated metrics records on real DHTs (two hivemind.DHT processes with their p2pd daemons)."""

from __future__ import annotations

import os
import signal
import time
from types import SimpleNamespace

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.config import GrowthStage, PeerSettings, RunConfig, StageModel
from peer.run.records import BanReport, LocalMetrics, MetricsSchema, metrics_key, parsed_entries
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.metrics import (
    MetricsPublisher,
    RecordSigning,
    fetch_metrics,
    make_validators,
    publish_metrics,
    swarm_fingerprint,
)

RUN = "recordtest"


def record(**changes) -> LocalMetrics:
    fields = dict(
        step=3,
        samples_per_second=12.5,
        samples_accumulated=8,
        samples_total=96,
        loss=2.5,
        mini_steps=12,
        time=time.time(),
    )
    return LocalMetrics(**(fields | changes))


def other_signer() -> RecordSigning:
    """A second identity in this process (hivemind's default key is one per process)."""
    signature = RSASignatureValidator(RSAPrivateKey())
    return RecordSigning(signature, [SchemaValidator(MetricsSchema, prefix=RUN), signature])


@pytest.fixture(scope="module")
def two_dhts():
    honest = make_validators(RUN)
    spec = PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    first = start_dht(spec, honest.validators)
    forger = other_signer()
    second = start_dht(
        PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=visible_maddrs(first)), forger.validators
    )
    yield first, honest, second, forger
    second.shutdown()
    first.shutdown()


@pytest.mark.timeout(120)
def test_valid_record_is_stored_and_read_back_by_another_node(two_dhts):
    first, honest, second, _ = two_dhts
    assert publish_metrics(first, RUN, honest, record(), expiration=60)
    found = fetch_metrics(second, RUN)
    assert found[honest.public_key].step == 3 and found[honest.public_key].samples_total == 96


@pytest.mark.timeout(120)
def test_a_record_with_the_steps_metrics_and_one_without_them_are_both_valid(two_dhts):
    """A peer of this version publishes the objective's metrics and gradient norms; one of an older version does
    not, and its record must stay valid for the nodes and the coordinator that read both."""
    first, honest, second, _ = two_dhts
    metrics = {"disc_accuracy": 0.9, "grad_norm": 1.0, "eval_disc_auc": 0.75}
    assert publish_metrics(first, RUN, honest, record(step=4, metrics=metrics), expiration=60)
    assert fetch_metrics(second, RUN)[honest.public_key].metrics == metrics
    older = record(step=5).dict()
    assert "metrics" not in older, "a record without metrics is written as a peer from before the field wrote it"
    stored = first.store(metrics_key(RUN), subkey=honest.public_key, value=older, expiration_time=get_dht_time() + 60)
    assert stored
    found = fetch_metrics(second, RUN)[honest.public_key]
    assert found.step == 5 and found.metrics == {}


@pytest.mark.timeout(120)
def test_a_record_says_its_growth_stage_and_a_first_stage_record_is_written_as_before_stages(two_dhts):
    """The coordinator tells the stages of a growing run apart by the records' ``stage``; a run without a growth
    schedule (always stage 0) must keep writing the records it wrote before the field existed."""
    first, honest, second, _ = two_dhts
    assert "stage" not in record(step=6).dict()
    assert publish_metrics(first, RUN, honest, record(step=7, stage=1), expiration=60)
    found = fetch_metrics(second, RUN)[honest.public_key]
    assert found.step == 7 and found.stage == 1


@pytest.mark.timeout(120)
def test_forged_record_under_someone_elses_key_is_rejected(two_dhts):
    first, honest, second, forger = two_dhts
    publish_metrics(first, RUN, honest, record(step=5), expiration=60)
    # the forger signs with its own key but claims the honest peer's subkey
    forged = second.store(
        metrics_key(RUN), subkey=honest.public_key, value=record(step=999).dict(), expiration_time=get_dht_time() + 120
    )
    assert not forged
    assert fetch_metrics(first, RUN)[honest.public_key].step == 5
    assert fetch_metrics(second, RUN)[honest.public_key].step == 5


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "bad",
    [
        dict(step=-1),
        dict(samples_per_second=1e12),
        dict(loss="low"),
        None,
        dict(metrics={f"m{i}": 0.5 for i in range(33)}),  # more metrics than a record may hold
        dict(metrics={"x" * 49: 0.5}),  # a metric name longer than MAX_METRIC_NAME_CHARS
        dict(metrics={"disc_accuracy": "high"}),
        dict(stage=-1),  # a growth stage below the first
        dict(stage=1.0),  # not an integer
        dict(stage=10**6),  # more stages than a run may have
    ],
)
def test_malformed_record_is_rejected(two_dhts, bad):
    _, _, second, forger = two_dhts
    value = record().dict()
    if bad is None:
        del value["samples_total"]
    else:
        value.update(bad)
    stored = second.store(metrics_key(RUN), subkey=forger.public_key, value=value, expiration_time=get_dht_time() + 60)
    assert not stored
    assert forger.public_key not in fetch_metrics(second, RUN)


@pytest.mark.timeout(120)
def test_publisher_never_waits_for_a_stuck_dht_and_sends_the_newest_record_when_it_recovers(two_dhts):
    """The training loop's metrics: with the DHT's process stopped (a store that cannot end), publishing returns at
    once and holds the newest record; once the DHT runs again, flush stores that one, not an older one."""
    first, honest, second, _ = two_dhts
    publisher = MetricsPublisher(first, RUN, honest, expiration=60)
    publisher.publish(record(step=20))
    assert publisher.flush(timeout=30) and publisher.stored == 1
    os.kill(first.pid, signal.SIGSTOP)
    try:
        publisher.publish(record(step=21))  # sent: the DHT process will read it when it runs again
        publisher.publish(record(step=22))  # held: one store in flight at a time
        publisher.publish(record(step=23))  # replaces the held one
        publisher.poll()
        assert (publisher.sent, publisher.superseded) == (2, 1)
        assert not publisher.flush(timeout=0.5)  # the store in flight cannot end while the DHT is stopped
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert publisher.flush(timeout=30)
    assert (publisher.sent, publisher.stored, publisher.failed) == (3, 3, 0)
    assert fetch_metrics(second, RUN)[honest.public_key].step == 23


def test_entries_that_do_not_parse_are_skipped():
    """What a node without our validators can answer: the entries of another schema, or none of any, are left out."""
    good = record().dict()
    entries = {b"good": good, b"not a record": {"step": "lots"}, b"a ban report": {"peer_id": "x"}}
    found = SimpleNamespace(value={subkey: SimpleNamespace(value=value) for subkey, value in entries.items()})
    assert parsed_entries(found, LocalMetrics) == {b"good": LocalMetrics(**good)}
    assert parsed_entries(found, BanReport) == {}  # none of them is a whole ban report
    assert parsed_entries(None, LocalMetrics) == {} and parsed_entries(SimpleNamespace(value=b"x"), LocalMetrics) == {}


def test_fingerprint_changes_with_the_model_only_where_it_matters():
    base = RunConfig()
    same = RunConfig()
    same.train.lr = 1.0  # per-peer choices do not split the swarm
    other = RunConfig()
    other.model.hidden_size = 512
    assert swarm_fingerprint(base) == swarm_fingerprint(same)
    assert swarm_fingerprint(base) != swarm_fingerprint(other)


def test_fingerprint_changes_with_the_growth_schedule():
    def with_schedule(*entries: tuple[int, int]) -> RunConfig:
        cfg = RunConfig()
        cfg.growth.schedule = [GrowthStage(step, StageModel(num_layers=layers)) for step, layers in entries]
        return cfg

    configs = [RunConfig(), with_schedule((100, 13)), with_schedule((200, 13)), with_schedule((100, 14))]
    configs.append(with_schedule((100, 13), (200, 14)))
    prints = {swarm_fingerprint(c) for c in configs}
    assert len(prints) == 5  # when, to what, and how many stages: peers disagreeing on any would split
    assert swarm_fingerprint(with_schedule((100, 13))) == swarm_fingerprint(with_schedule((100, 13)))
