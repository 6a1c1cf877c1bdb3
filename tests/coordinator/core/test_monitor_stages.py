"""The monitor across a growth schedule: a signed record whose stage does not match the schedule at its step (a high
step without the switch it implies, a stage the schedule does not have) is rejected, counted as ``bad_stage`` once,
and moves nothing; honest records of both stages make one history whose points carry the stage."""

import time

import hivemind
import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey
from prometheus_client import generate_latest

from coordinator.metrics import CoordinatorMetrics
from coordinator.monitor import REASON_BAD_STAGE, Monitor
from peer.config import GrowthSpec, GrowthStage, ModelSpec, RunConfig, StageModel, model_stages
from peer.run.records import LocalMetrics, MetricsSchema, metrics_key
from peer.swarm.stage_keys import stage_matches
from tests.coordinator.core.coordinator_node import LOOPBACK, coordinator_node

RUN = "monitor-stage-test"
AT_STEP = 10


def stages():
    cfg = RunConfig(
        run_id=RUN,
        model=ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64),
        growth=GrowthSpec(schedule=[GrowthStage(AT_STEP, StageModel(hidden_size=64, num_heads=4, ffn_size=128))]),
    )
    return model_stages(cfg)


def record(step: int, stage: int, samples_total: int, name: str) -> dict:
    return LocalMetrics(
        step=step,
        samples_per_second=1.0,
        samples_accumulated=0,
        samples_total=samples_total,
        loss=2.0,
        mini_steps=1,
        time=get_dht_time(),
        peer_name=name,
        stage=stage,
    ).dict()


def test_stage_matches_the_schedule_at_the_step():
    s = stages()
    assert stage_matches(s, 0, 0) and stage_matches(s, 0, AT_STEP)  # the switch step is reported in the old stage
    assert stage_matches(s, 1, AT_STEP) and stage_matches(s, 1, 10**6)
    assert not stage_matches(s, 0, AT_STEP + 1)  # past the switch without it
    assert not stage_matches(s, 1, AT_STEP - 1)  # grown before the schedule says
    assert not stage_matches(s, 2, 10**6)  # a stage the schedule does not have
    assert not stage_matches(s[:1], 1, 5)  # a run without a schedule has stage 0 only


@pytest.mark.timeout(180)
def test_records_whose_stage_does_not_match_the_schedule_are_rejected_and_counted(tmp_path):
    with coordinator_node(tmp_path / "c.db", RUN) as node:
        store, dhts = node.store, node.dhts

        def signed_peer():
            sig = RSASignatureValidator(RSAPrivateKey())
            dht = hivemind.DHT(
                initial_peers=node.initial,
                host_maddrs=LOOPBACK,
                record_validators=[SchemaValidator(MetricsSchema, prefix=RUN), sig],
                start=True,
            )
            dhts.append(dht)
            return dht, sig.local_public_key

        (alice, alice_key), (mallory, mallory_key) = signed_peer(), signed_peer()
        monitor = Monitor(node.dht, store, RUN, alive_window=60, interval=1, stages=stages())
        expiration = get_dht_time() + 120
        assert alice.store(metrics_key(RUN), record(AT_STEP - 2, 0, 100, "alice"), expiration, subkey=alice_key)
        # signed by its own key (no bad_signature), valid by the schema, and a lie about the schedule: a step far
        # past the switch in the first stage's model
        forged = record(10**6, 0, 10**9, "mallory")
        assert mallory.store(metrics_key(RUN), forged, expiration, subkey=mallory_key)
        deadline = time.time() + 30
        while time.time() < deadline and not store.rejected_counts().get(REASON_BAD_STAGE):
            snap = monitor.poll()
            time.sleep(0.2)
        for _ in range(3):  # the same record seen again is not counted again
            snap = monitor.poll()
        assert store.rejected_counts().get(REASON_BAD_STAGE) == 1, store.rejected_counts()
        assert (snap.global_step, snap.alive_peers) == (AT_STEP - 2, 1)
        assert {p.name for p in store.peers()} == {"alice"}

        # the switch: alice reports the new stage past its step; mallory now claims a stage the run does not have
        expiration = get_dht_time() + 180
        assert alice.store(metrics_key(RUN), record(AT_STEP + 1, 1, 300, "alice"), expiration, subkey=alice_key)
        assert mallory.store(metrics_key(RUN), record(AT_STEP + 2, 5, 10**9, "mallory"), expiration, subkey=mallory_key)
        deadline = time.time() + 30
        while time.time() < deadline:
            snap = monitor.poll()
            if snap.global_step == AT_STEP + 1 and store.rejected_counts().get(REASON_BAD_STAGE) == 2:
                break
            time.sleep(0.5)
        assert store.rejected_counts().get(REASON_BAD_STAGE) == 2, store.rejected_counts()
        assert snap.global_step == AT_STEP + 1 and {p.name for p in store.peers()} == {"alice"}
        history = store.history()
        assert {(h.step, h.stage) for h in history} == {(AT_STEP - 2, 0), (AT_STEP + 1, 1)}
        assert [h.stage for h in history] == sorted(h.stage for h in history)  # one history, in order
        scraped = generate_latest(CoordinatorMetrics(store).registry).decode()
        assert 'warmswarm_rejected_records_total{reason="bad_stage"} 2.0' in scraped
