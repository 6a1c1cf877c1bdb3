"""Signed, schema-validated ``LocalMetrics`` records under ``<run_id>_metrics`` (subkey = this peer's public key).

Every DHT node validates each record with ``SchemaValidator`` (field types and bounds from ``peer.run.records``) and
``RSASignatureValidator`` (only the key's holder can write its subkey), so the coordinator can trust who did what.
Records expire after ``SwarmSpec.metrics_expiration`` seconds; a live peer refreshes its record every few seconds.
With an identity file, the signing key (``peer.swarm.record_key``) and the samples count (``peer.swarm.sample_count``)
are the volunteer's across restarts, so the coordinator adds a restarted volunteer's samples to its one row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time

from peer.config import RunConfig
from peer.run.record_limits import RecordSizeLimit
from peer.run.records import LocalMetrics, MetricsSchema, metrics_key, parsed_entries
from peer.swarm.modes import averaging_mode
from peer.swarm.record_key import load_or_create_record_key, record_key_path, use_as_process_key
from peer.swarm.sample_count import SampleCount, sample_count_path

logger = logging.getLogger(__name__)


@dataclass
class RecordSigning:
    """The validators a peer's DHT must run, the signer's public key (the subkey of this peer's records), and the
    volunteer's samples count across sessions (None: this session's count is the whole count)."""

    signature: RSASignatureValidator
    validators: list[RecordValidatorBase]
    count: SampleCount | None = None

    @property
    def public_key(self) -> bytes:
        return self.signature.local_public_key

    @property
    def data_seed_material(self) -> bytes:
        """What this session's data order and masking are seeded from: the volunteer's key, and the samples its
        earlier sessions counted. A volunteer that keeps its key across restarts (``--identity_path``) must not
        replay the same batches from the start in every session; a fresh volunteer's seed is its key alone."""
        if self.count is None or self.count.base == 0:
            return self.public_key
        return self.public_key + b"/samples=" + str(self.count.base).encode()

    def value(self, metrics: LocalMetrics) -> dict:
        """The DHT value of ``metrics`` (a session's record): its ``samples_total`` counted on from the volunteer's
        earlier sessions, and saved before it is sent."""
        value = metrics.dict()
        if self.count is not None:
            value["samples_total"] = self.count.total(metrics.samples_total)
        return value


def make_validators(run_id: str, identity_path: str | None = None) -> RecordSigning:
    """Size + schema + signature validators for ``run_id``'s records. The RSA key is hivemind's process key: with
    ``identity_path``, the volunteer's own, loaded from (or first written to) ``<identity_path>.records.der``
    (``peer.swarm.record_key``), and its samples count goes on from ``<identity_path>.samples.json``; without, a
    fresh key and a count from 0. The size limit (``peer.run.record_limits``) runs first and drops oversized
    records from anyone."""
    count = None
    if identity_path:
        use_as_process_key(load_or_create_record_key(record_key_path(identity_path)))
        count = SampleCount(sample_count_path(identity_path), run_id)
    signature = RSASignatureValidator()
    schema = SchemaValidator(MetricsSchema, prefix=run_id)
    return RecordSigning(signature, [RecordSizeLimit(), schema, signature], count)


def swarm_fingerprint(cfg: RunConfig) -> str:
    """A short hash of what must match between peers of one run (model sizes, objective, and the averaging mode's
    part, ``AveragingMode.fingerprint``): a peer whose fingerprint differs would send tensors of the wrong shapes or
    meaning. A growth schedule is part of it (peers that grow at different steps or to different sizes would too);
    a run without one keeps the fingerprint it had before schedules existed."""
    relevant = dict(
        model=vars(cfg.model), objective=cfg.objective.name, **averaging_mode(cfg.swarm).fingerprint(cfg.swarm)
    )
    if cfg.growth.schedule:
        relevant["growth_schedule"] = [dataclasses.asdict(stage) for stage in cfg.growth.schedule]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def publish_metrics(dht: hivemind.DHT, run_id: str, signing: RecordSigning, metrics: LocalMetrics, expiration: float):
    """Stores this peer's record; returns whether the DHT accepted it (False when no node would store it)."""
    return dht.store(
        key=metrics_key(run_id),
        subkey=signing.public_key,
        value=signing.value(metrics),
        expiration_time=get_dht_time() + expiration,
        return_future=False,
    )


class MetricsPublisher:
    """Publishes this peer's ``LocalMetrics`` from the training loop without waiting for the DHT.

    Why: a store is a round trip to the nodes nearest the key (signing, validation and storage on each), and on a
    swarm of loaded machines it takes tens to hundreds of milliseconds; a loop that waited for it every few seconds
    lost that time from training (``bench/swarm.py``'s utilisation, 4 peers). So at most one store is in flight;
    a record that arrives meanwhile is held, a newer one replaces it (only the latest matters: records are a
    snapshot, not a log), and it is sent as soon as the store in flight ends. ``flush`` sends what is held and
    waits, for the last record before a peer leaves."""

    def __init__(self, dht: hivemind.DHT, run_id: str, signing: RecordSigning, expiration: float) -> None:
        self.dht, self.run_id, self.signing, self.expiration = dht, run_id, signing, expiration
        self._in_flight = None  # hivemind's MPFuture of the store under way
        self._held: LocalMetrics | None = None
        self.sent = self.stored = self.superseded = self.failed = 0  # counted for logs, tests and benchmarks
        self.seconds = 0.0  # time the caller spent in publish/poll (what the loop loses to metrics)

    def publish(self, metrics: LocalMetrics) -> None:
        """Sends ``metrics`` now, or holds it until the store in flight ends; never waits for the network."""
        t0 = time.perf_counter()
        if self._busy():
            if self._held is not None:
                self.superseded += 1
            self._held = metrics
        else:
            self._send(metrics)
        self.seconds += time.perf_counter() - t0

    def poll(self) -> None:
        """Sends the held record once the store in flight has ended (cheap: call it every step)."""
        if self._held is not None and not self._busy():
            t0 = time.perf_counter()
            held, self._held = self._held, None
            self._send(held)
            self.seconds += time.perf_counter() - t0

    def flush(self, timeout: float) -> bool:
        """Sends the held record and waits (at most ``timeout`` s in all) until nothing is in flight; returns
        whether the last store ended in time."""
        deadline = time.monotonic() + timeout
        if not self._wait(deadline):
            return False
        if self._held is not None:
            held, self._held = self._held, None
            self._send(held)
        return self._wait(deadline)

    def _busy(self) -> bool:
        if self._in_flight is None:
            return False
        if not self._in_flight.done():
            return True
        self._collect()
        return False

    def _wait(self, deadline: float) -> bool:
        if self._in_flight is not None:
            try:
                self._in_flight.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # read (and counted) by _collect; a timeout leaves the store in flight
                if not self._in_flight.done():
                    return False
            self._collect()
        return True

    def _send(self, metrics: LocalMetrics) -> None:
        self.sent += 1
        self._in_flight = self.dht.store(
            key=metrics_key(self.run_id),
            subkey=self.signing.public_key,
            value=self.signing.value(metrics),
            expiration_time=get_dht_time() + self.expiration,
            return_future=True,
        )

    def _collect(self) -> None:
        future, self._in_flight = self._in_flight, None
        try:
            stored = bool(future.result(timeout=0))
        except Exception as e:
            stored = False
            logger.warning("storing this peer's metrics record failed: %r", e)
        if stored:
            self.stored += 1
        else:
            self.failed += 1
            logger.debug("no DHT node stored this peer's metrics record")


def fetch_metrics(dht: hivemind.DHT, run_id: str) -> dict[bytes, LocalMetrics]:
    """All unexpired, valid records of the run, by public key (invalid ones never reach a node's storage)."""
    return parsed_entries(dht.get(metrics_key(run_id), latest=True), LocalMetrics)
