"""Fast versions of ``bench/faults.py``'s scenarios: the same functions with real coordinator and peer processes,
fewer repetitions. Each asserts every row that has a target, so a regression in what a scenario guards (crash-safe
checkpoints, resume from the coordinator, record validation, state after a kill) fails here."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils import MSGPackSerializer
from hivemind.utils.crypto import RSAPrivateKey

from bench.faultlib.bad_records import OVERSIZED_PAD, good_metrics, owner_subkey
from bench.faultlib.procs import TinyModel
from bench.faultlib.scenarios import (
    AllLeaveSettings,
    CoordinatorKillSettings,
    PeerKillSettings,
    RecordSettings,
    Row,
    TokenSettings,
    all_leave,
    bad_records,
    bad_tokens,
    coordinator_kill,
    peer_kill,
)
from peer.run.record_limits import MAX_RECORD_BYTES, RecordSizeLimit
from peer.run.records import metrics_key

logger = logging.getLogger(__name__)


def assert_rows(rows: list[Row]) -> None:
    failed = [row for row in rows if row.passed is False]
    # every row on failure, the context rows too: they say what went on (e.g. what differs between the peers)
    lines = [f"{'FAIL ' if r in failed else ''}{r.measured}: {r.figure} (target {r.target})" for r in rows]
    for line in lines:  # the figures of a passing run too (pytest -o log_cli=true --log-cli-level=INFO)
        logger.info("%s", line)
    assert not failed, "\n".join(lines)
    assert any(row.passed for row in rows), rows


def signed_record(value: dict, key: RSAPrivateKey) -> DHTRecord:
    """A metrics record as it arrives at a node: msgpack value + the owner's signature."""
    signer = RSASignatureValidator(key)
    record = DHTRecord(
        key=DHTID.generate(source=metrics_key("run")).to_bytes(),
        subkey=MSGPackSerializer.dumps(owner_subkey(key)),
        value=MSGPackSerializer.dumps(value),
        expiration_time=1e12,
    )
    return dataclasses.replace(record, value=signer.sign_value(record))


def test_size_limit_drops_an_oversized_record_that_is_validly_signed():
    key = RSAPrivateKey()
    small, big = good_metrics(), good_metrics()
    big["padding"] = "x" * OVERSIZED_PAD
    signature, limit = RSASignatureValidator(key), RecordSizeLimit()
    chain = CompositeValidator([signature, limit])
    assert signature.validate(signed_record(big, key))  # the signature alone lets it through
    assert not chain.validate(signed_record(big, key))
    assert chain.validate(signed_record(small, key))
    assert limit.rejected == 1


def test_size_limit_runs_before_the_signature_check_and_merges_to_the_stricter_bound():
    assert RecordSizeLimit().priority > RSASignatureValidator(RSAPrivateKey()).priority
    chain = CompositeValidator([RecordSizeLimit(), RecordSizeLimit(1000)])
    limits = [v for v in chain._validators if isinstance(v, RecordSizeLimit)]
    assert len(limits) == 1 and limits[0].max_bytes == 1000
    record = DHTRecord(b"k" * 10, b"s" * 10, b"v" * (MAX_RECORD_BYTES - 20), 1e12)
    assert RecordSizeLimit().validate(record)
    assert not RecordSizeLimit().validate(dataclasses.replace(record, value=record.value + b"v"))
    with pytest.raises(ValueError):
        RecordSizeLimit(0)


@pytest.mark.slow
@pytest.mark.scenario
@pytest.mark.timeout(900)
def test_bad_records_are_rejected_and_counted_by_reason(tmp_path):
    assert_rows(bad_records(tmp_path, RecordSettings(count=2)))


@pytest.mark.slow
@pytest.mark.scenario
@pytest.mark.timeout(900)
def test_tampered_and_expired_tokens_are_refused_and_counted_valid_one_joins(tmp_path):
    assert_rows(bad_tokens(tmp_path, TokenSettings(attempts=1)))


@pytest.mark.slow
@pytest.mark.scenario
@pytest.mark.timeout(900)
def test_coordinator_killed_inside_a_checkpoint_write_leaves_no_half_checkpoint(tmp_path):
    # 3 waits of at most 240 s each fit the 900 s timeout, so a stuck run fails with the processes' logs
    assert_rows(coordinator_kill(tmp_path, CoordinatorKillSettings(kills=1, peers=1, patience=240.0)))


@pytest.mark.slow
@pytest.mark.scenario
@pytest.mark.timeout(900)
def test_newcomer_after_every_peer_left_resumes_from_the_latest_checkpoint(tmp_path):
    assert_rows(all_leave(tmp_path, AllLeaveSettings(peers=1, model=TinyModel(target_batch_size=64))))


@pytest.mark.slow
@pytest.mark.scenario
@pytest.mark.timeout(1200)
def test_peer_killed_mid_round_survivors_step_on_with_identical_state(tmp_path):
    # The newcomer's first steps after its state download were 1.3e-4 to 2.2e-4 from the survivor (steps 7-9 with 1
    # settle step, 2026-12-04); from the next applied state average on, 3.7e-9 (steps 10-16). With 4 settle steps and
    # 3 samples, 2 runs of 6 failed on 2026-12-05 (one: 1.9e-4 at 2 of 3 steps, 8-10; the logs show the states read
    # while one peer had applied the round's state average and the other not yet). So: settle 8 steps, compare 5 and
    # take the median (the bench: 7). Why the peers' own parameters differed before that average, traced 2026-12-06:
    # hivemind copied a background state round's result over the optimizer step taken while it ran, on each peer by
    # its own timing (now applied by the delta rule, GuardedOptimizer._make_state_averager).
    assert_rows(peer_kill(tmp_path, PeerKillSettings(peers=2, kills=1, settle_steps=8, state_samples=5)))
