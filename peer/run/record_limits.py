"""A DHT record validator that refuses oversized records before anything else looks at them.

Why: every node of an open swarm stores what its neighbours send it, so one stranger storing megabyte values under
fresh subkeys fills every peer's memory and makes every ``dht.get`` of the run slow. The schema validator cannot
stop that cheaply (it deserializes first) and the signature validator only proves who wrote the bytes. Every record
this system writes is small (a ``LocalMetrics`` record is ~1 KB signed, the run config a few KB, member tokens and
rejection reports well under the limit), so a generous fixed bound costs honest peers nothing.

The limit applies to every key, ours and hivemind's own (matchmaking and averager records are tiny too): an
oversized record is hostile whatever key it is stored under.
"""

from __future__ import annotations

import logging

from hivemind.dht.validation import DHTRecord, RecordValidatorBase

logger = logging.getLogger(__name__)

REASON_OVERSIZED = "oversized"  # the reason label of the rejection counters (warmswarm_rejected_records_total)
MAX_RECORD_BYTES = 64 * 1024  # key + subkey + signed value; 50x the largest record we write


class RecordSizeLimit(RecordValidatorBase):
    """Rejects a record whose key, subkey and (signed, serialized) value together exceed ``max_bytes``.

    It runs first on validation (highest priority): size is the cheapest check, so an oversized record is dropped
    before RSA verification or msgpack decoding spend anything on it. It changes nothing on signing or stripping.
    ``rejected`` counts refusals (the coordinator also wraps it in its own per-run counter)."""

    def __init__(self, max_bytes: int = MAX_RECORD_BYTES):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.rejected = 0

    def validate(self, record: DHTRecord) -> bool:
        size = len(record.key) + len(record.subkey) + len(record.value)
        if size > self.max_bytes:
            self.rejected += 1
            logger.debug("rejected an oversized DHT record: %d bytes > %d", size, self.max_bytes)
            return False
        return True

    def sign_value(self, record: DHTRecord) -> bytes:
        return record.value

    def strip_value(self, record: DHTRecord) -> bytes:
        return record.value

    @property
    def priority(self) -> int:
        return 100  # above RSASignatureValidator (10): validated first

    def merge_with(self, other: RecordValidatorBase) -> bool:
        """Two size limits in one DHT become one, with the stricter bound."""
        if isinstance(other, RecordSizeLimit):
            self.max_bytes = min(self.max_bytes, other.max_bytes)
            return True
        return False
