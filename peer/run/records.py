"""The records peers publish to the DHT, shared by the peer (writer) and the coordinator (reader).

A peer stores its ``LocalMetrics`` under the key ``<run_id>_metrics`` with its RSA public key as subkey; the DHT
enforces the schema (``SchemaValidator``) and the signature (``RSASignatureValidator``) on every node, so a record can
only be written or replaced by the holder of the key it claims. hivemind validates with pydantic v1 models.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import pydantic.v1 as pydantic
from hivemind.dht.schema import BytesWithPublicKey

logger = logging.getLogger(__name__)

# Sanity bounds: a record outside them is malformed, not merely surprising.
MAX_SAMPLES_PER_SECOND = 1e7
MAX_STEP = 10**12
MAX_PEER_ID_CHARS = 128  # a base58 libp2p id is ~46-53 characters
MAX_REPORTED_PEERS = 256  # a report naming more peers than a swarm plausibly has is malformed
MAX_RECORD_METRICS = 32  # an ELECTRA peer publishes ~20 (its step's metrics, gradient norms, held-out metrics)
MAX_METRIC_NAME_CHARS = 48
MAX_STAGES = 64  # growth stages of one run (a schedule is a handful of entries)


class LocalMetrics(pydantic.BaseModel):
    """One peer's progress, refreshed every few seconds and expiring (``SwarmSpec.metrics_expiration``)."""

    step: pydantic.conint(ge=0, le=MAX_STEP, strict=True)  # the peer's current global (optimizer) step
    # the peer's own estimate, informational: the coordinator's rates come from samples_total (coordinator.rates)
    samples_per_second: pydantic.confloat(ge=0.0, le=MAX_SAMPLES_PER_SECOND, strict=True)
    samples_accumulated: pydantic.conint(ge=0, strict=True)  # samples since the last global step
    samples_total: pydantic.conint(ge=0, strict=True)  # samples this peer contributed since it joined (this session)
    loss: pydantic.StrictFloat
    mini_steps: pydantic.conint(ge=0, strict=True)
    time: pydantic.StrictFloat  # unix time the record was made (peer clock)
    peer_name: pydantic.constr(max_length=64) = ""  # volunteer's chosen display name (may be empty)
    # peer.swarm.metrics.swarm_fingerprint of the peer's config: lets a joiner detect a model/objective mismatch
    fingerprint: pydantic.constr(max_length=64) = ""
    # the peer's libp2p id (base58): how the coordinator maps a ban (by peer id) to a volunteer's record
    peer_id: pydantic.constr(max_length=MAX_PEER_ID_CHARS) = ""
    # the objective's metrics of the peer's last step (e.g. disc_accuracy, mlm_accuracy, sop_accuracy), the norm of
    # the gradients it sent after clipping (grad_norm) and before (grad_norm_unclipped), and its last held-out
    # evaluation (eval_<name>). Defaulted: a record from a peer that publishes none (an older one) stays valid.
    metrics: dict[pydantic.constr(min_length=1, max_length=MAX_METRIC_NAME_CHARS), pydantic.StrictFloat] = {}
    # the growth stage the peer trains (0: the run's first; ``growth.schedule``'s entry k is stage k+1), so that the
    # coordinator can tell the stages apart. Defaulted and left out at 0: a run without a schedule sends the records
    # it sent before stages existed
    stage: pydantic.conint(ge=0, le=MAX_STAGES, strict=True) = 0

    @pydantic.validator("metrics")
    def _few_metrics(cls, value: dict) -> dict:
        if len(value) > MAX_RECORD_METRICS:
            raise ValueError(f"a record may hold at most {MAX_RECORD_METRICS} metrics")
        return value

    def dict(self, **kwargs) -> dict:
        """The record's fields, without ``metrics`` when it is empty (nor ``stage`` when 0). Why: hivemind's
        ``SchemaValidator`` accepts a record only if parsing it changes nothing, so a record written without the
        field (by a peer from before it) must parse back without it too; and a record with no metrics stays readable
        by nodes from before it. A record *with* metrics (or a stage) is dropped by such older nodes (they ignore the
        field, so parsing changes it): the coordinator, the run's first DHT node, must be upgraded before its peers."""
        data = super().dict(**kwargs)
        if not data.get("metrics"):
            data.pop("metrics", None)
        if not data.get("stage"):  # the same rule for the stage: stage 0 is written as before stages existed
            data.pop("stage", None)
        return data


class MetricsSchema(pydantic.BaseModel):
    metrics: dict[BytesWithPublicKey, LocalMetrics]


def metrics_key(run_id: str) -> str:
    return f"{run_id}_metrics"


def config_key(run_id: str) -> str:
    return f"{run_id}_config"


class BanReport(pydantic.BaseModel):
    """One peer's evidence against others (``<run_id>_reports``, subkey = the reporter's public key, signed):
    how many averaging rounds each peer's contribution was clipped or non-finite at this reporter's reducer, and the
    peers this reporter has banned locally (``ban_after`` such rounds in a row), each with the reason."""

    peer_id: pydantic.constr(min_length=1, max_length=MAX_PEER_ID_CHARS)  # the reporter's own libp2p id
    rejected: dict[pydantic.constr(min_length=1, max_length=MAX_PEER_ID_CHARS), pydantic.conint(ge=0, strict=True)]
    banned: dict[pydantic.constr(min_length=1, max_length=MAX_PEER_ID_CHARS), pydantic.constr(max_length=200)]
    # this reporter's all-time rejected contributions by outcome ("clipped", "non_finite"): the coordinator's
    # warmswarm_rejected_contributions_total{reason}
    counts: dict[pydantic.constr(max_length=32), pydantic.conint(ge=0, strict=True)] = {}
    time: pydantic.StrictFloat

    @pydantic.validator("rejected", "banned", "counts")
    def _bounded(cls, value: dict) -> dict:
        if len(value) > MAX_REPORTED_PEERS:
            raise ValueError(f"a report may name at most {MAX_REPORTED_PEERS} peers")
        return value


class BanEntry(pydantic.BaseModel):
    peer_id: pydantic.constr(min_length=1, max_length=MAX_PEER_ID_CHARS)
    reason: pydantic.constr(max_length=200) = ""


class BanList(pydantic.BaseModel):
    """The coordinator's verdict (``<run_id>_bans``, subkey = the coordinator's public key, signed): peers no one
    should average with for the rest of the run."""

    bans: pydantic.conlist(BanEntry, max_items=4 * MAX_REPORTED_PEERS)
    time: pydantic.StrictFloat


class BansSchema(pydantic.BaseModel):
    """Schema of both ban records (a second ``SchemaValidator`` next to ``MetricsSchema``'s)."""

    reports: dict[BytesWithPublicKey, BanReport] | None = None
    bans: dict[BytesWithPublicKey, BanList] | None = None


def reports_key(run_id: str) -> str:
    return f"{run_id}_reports"


def bans_key(run_id: str) -> str:
    return f"{run_id}_bans"


Record = TypeVar("Record", bound=pydantic.BaseModel)


def parsed_entries(found, model: type[Record]) -> dict[bytes, Record]:
    """The entries of a DHT dictionary record as ``get`` returns it (None: no record), by subkey, each parsed as
    ``model``; one that does not parse (written before a schema change, or by a node without our validators) is
    skipped with a DEBUG line."""
    if found is None or not isinstance(found.value, dict):
        return {}
    parsed = {}
    for subkey, item in found.value.items():
        try:
            parsed[subkey] = model.parse_obj(item.value)
        except Exception as e:
            logger.debug("skipping an unparsable %s record: %s", model.__name__, e)
    return parsed
