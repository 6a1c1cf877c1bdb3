"""The records peers publish to the DHT, shared by the peer (writer) and the coordinator (reader).

A peer stores its ``LocalMetrics`` under the key ``<run_id>_metrics`` with its RSA public key as subkey; the DHT
enforces the schema (``SchemaValidator``) and the signature (``RSASignatureValidator``) on every node, so a record can
only be written or replaced by the holder of the key it claims. hivemind validates with pydantic v1 models.
"""

from __future__ import annotations

import pydantic.v1 as pydantic
from hivemind.dht.schema import BytesWithPublicKey

# Sanity bounds: a record outside them is malformed, not merely surprising.
MAX_SAMPLES_PER_SECOND = 1e7
MAX_STEP = 10**12


class LocalMetrics(pydantic.BaseModel):
    """One peer's progress, refreshed every few seconds and expiring (``SwarmSpec.metrics_expiration``)."""

    step: pydantic.conint(ge=0, le=MAX_STEP, strict=True)  # the peer's current global (optimizer) step
    samples_per_second: pydantic.confloat(ge=0.0, le=MAX_SAMPLES_PER_SECOND, strict=True)
    samples_accumulated: pydantic.conint(ge=0, strict=True)  # samples since the last global step
    samples_total: pydantic.conint(ge=0, strict=True)  # samples this peer contributed since it joined
    loss: pydantic.StrictFloat
    mini_steps: pydantic.conint(ge=0, strict=True)
    time: pydantic.StrictFloat  # unix time the record was made (peer clock)
    peer_name: pydantic.constr(max_length=64) = ""  # volunteer's chosen display name (may be empty)
    # peer.swarm.metrics.swarm_fingerprint of the peer's config: lets a joiner detect a model/objective mismatch
    fingerprint: pydantic.constr(max_length=64) = ""


class MetricsSchema(pydantic.BaseModel):
    metrics: dict[BytesWithPublicKey, LocalMetrics]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def config_key(run_id: str) -> str:
    return f"{run_id}_config"
