"""Signed, schema-validated ``LocalMetrics`` records under ``<run_id>_metrics`` (subkey = this peer's public key).

Every DHT node validates each record with ``SchemaValidator`` (field types and bounds from ``peer.records``) and
``RSASignatureValidator`` (only the key's holder can write its subkey), so the coordinator can trust who did what.
Records expire after ``SwarmSpec.metrics_expiration`` seconds; a live peer refreshes its record every few seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time

from peer.config import RunConfig
from peer.records import LocalMetrics, MetricsSchema, metrics_key
from peer.swarm.record_limits import RecordSizeLimit

logger = logging.getLogger(__name__)


@dataclass
class RecordSigning:
    """The validators a peer's DHT must run, and the signer's public key (the subkey of this peer's records)."""

    signature: RSASignatureValidator
    validators: list[RecordValidatorBase]

    @property
    def public_key(self) -> bytes:
        return self.signature.local_public_key


def make_validators(run_id: str) -> RecordSigning:
    """Size + schema + signature validators for ``run_id``'s records; the RSA key is this process's (hivemind
    default). The size limit (``peer.swarm.record_limits``) runs first and drops oversized records from anyone."""
    signature = RSASignatureValidator()
    schema = SchemaValidator(MetricsSchema, prefix=run_id)
    return RecordSigning(signature, [RecordSizeLimit(), schema, signature])


def swarm_fingerprint(cfg: RunConfig) -> str:
    """A short hash of what must match between peers of one run (model sizes, objective, averaging mode): a peer
    whose fingerprint differs would send tensors of the wrong shapes or meaning."""
    relevant = dict(
        model=vars(cfg.model),
        objective=cfg.objective.name,
        averaging=cfg.swarm.averaging,
        target_batch_size=cfg.swarm.target_batch_size,
    )
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def publish_metrics(dht: hivemind.DHT, run_id: str, signing: RecordSigning, metrics: LocalMetrics, expiration: float):
    """Stores this peer's record; returns whether the DHT accepted it (False when no node would store it)."""
    return dht.store(
        key=metrics_key(run_id),
        subkey=signing.public_key,
        value=metrics.dict(),
        expiration_time=get_dht_time() + expiration,
        return_future=False,
    )


def fetch_metrics(dht: hivemind.DHT, run_id: str) -> dict[bytes, LocalMetrics]:
    """All unexpired, valid records of the run, by public key (invalid ones never reach a node's storage)."""
    found = dht.get(metrics_key(run_id), latest=True)
    if found is None or not isinstance(found.value, dict):
        return {}
    records = {}
    for subkey, item in found.value.items():
        try:
            records[subkey] = LocalMetrics.parse_obj(item.value)
        except Exception as e:  # a record written before a schema change, or by a peer without validators
            logger.debug("skipping unparsable metrics record: %s", e)
    return records
