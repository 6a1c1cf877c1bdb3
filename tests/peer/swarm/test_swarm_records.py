"""Signed, schema-validated metrics records on real DHTs (two hivemind.DHT processes with their p2pd daemons)."""

from __future__ import annotations

import time

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.config import RunConfig, SwarmSpec
from peer.records import LocalMetrics, MetricsSchema, metrics_key
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.metrics import RecordSigning, fetch_metrics, make_validators, publish_metrics, swarm_fingerprint

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
    spec = SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    first = start_dht(spec, honest.validators)
    forger = other_signer()
    second = start_dht(
        SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=visible_maddrs(first)), forger.validators
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
@pytest.mark.parametrize("bad", [dict(step=-1), dict(samples_per_second=1e12), dict(loss="low"), None])
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


def test_fingerprint_changes_with_the_model_only_where_it_matters():
    base = RunConfig()
    same = RunConfig()
    same.train.lr = 1.0  # per-peer choices do not split the swarm
    other = RunConfig()
    other.model.hidden_size = 512
    assert swarm_fingerprint(base) == swarm_fingerprint(same)
    assert swarm_fingerprint(base) != swarm_fingerprint(other)
