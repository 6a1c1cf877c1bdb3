"""A hostile DHT node that writes forged, malformed and oversized ``<run_id>_metrics`` records into a live run.

It is a real hivemind DHT (its own p2pd) joined to the run through the coordinator, and it runs none of the run's
validators, so its bad records really go out on the wire and the honest nodes' validators are what stops them:

- forged: claims another key's subkey and carries a signature made with the attacker's key (the wrong one);
- malformed: under the attacker's own key, validly signed, but breaking the ``LocalMetrics`` schema;
- oversized: under the attacker's own key, validly signed, with a 256 KiB extra field (the size limit drops it
  before anything decodes it; the schema would refuse it too, but only after msgpack-decoding 256 KiB);
- honest (the control): a well-formed record under the attacker's own key, which must be accepted.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import partial

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils import MSGPackSerializer, get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from peer.run.records import LocalMetrics, metrics_key

OVERSIZED_PAD = 256 * 1024  # bytes of padding: 4x the limit, well under p2pd's 4 MiB message cap


class WrongKeySigner(RecordValidatorBase):
    """Signs every record with this key, whoever's subkey it is under: a forger's signer."""

    def __init__(self, private_key: RSAPrivateKey):
        self.key = private_key

    def validate(self, record: DHTRecord) -> bool:
        return True  # the attacker accepts anything

    def sign_value(self, record: DHTRecord) -> bytes:
        data = MSGPackSerializer.dumps(dataclasses.astuple(record))
        return record.value + RSASignatureValidator.SIGNATURE_FORMAT.replace(b"_value_", self.key.sign(data))

    def strip_value(self, record: DHTRecord) -> bytes:
        return RSASignatureValidator._SIGNATURE_RE.sub(b"", record.value)

    @property
    def priority(self) -> int:
        return 10


def good_metrics(**changes) -> dict:
    fields = dict(
        step=1,
        samples_per_second=1.0,
        samples_accumulated=0,
        samples_total=8,
        loss=3.0,
        mini_steps=2,
        time=time.time(),
    )
    return LocalMetrics(**(fields | changes)).dict()


def owner_subkey(key: RSAPrivateKey) -> bytes:
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", key.get_public_key().to_bytes())


async def _store_padded(dht, node, *, key: str, subkey: bytes, value: dict, pad: int, expiration: float) -> bool:
    return bool(await node.store(key, dict(value, padding="x" * pad), expiration, subkey=subkey))


@dataclass
class Attacker:
    """Two hostile DHT nodes in one harness: one signs with its own key (malformed, oversized, control), one signs
    everything with that same key under a victim's subkey (forged)."""

    run_id: str
    own: hivemind.DHT
    forger: hivemind.DHT
    key: RSAPrivateKey
    victim_subkey: bytes

    @classmethod
    def join(cls, run_id: str, initial_peers: list[str]) -> Attacker:
        key = RSAPrivateKey()
        common = dict(
            initial_peers=initial_peers, host_maddrs=["/ip4/127.0.0.1/tcp/0"], startup_timeout=120, start=True
        )  # generous: p2pd starts slowly on a loaded machine
        own = hivemind.DHT(record_validators=[RSASignatureValidator(key)], **common)
        forger = hivemind.DHT(record_validators=[WrongKeySigner(key)], **common)
        return cls(run_id, own, forger, key, owner_subkey(RSAPrivateKey()))

    def _store(self, dht: hivemind.DHT, subkey: bytes, value: dict) -> bool:
        expiration = get_dht_time() + 120
        return bool(dht.store(metrics_key(self.run_id), subkey=subkey, value=value, expiration_time=expiration))

    def forged(self) -> bool:
        return self._store(self.forger, self.victim_subkey, good_metrics(step=10**6))

    def malformed(self) -> bool:
        value = good_metrics()
        value["step"] = -5  # LocalMetrics: step >= 0
        return self._store(self.own, owner_subkey(self.key), value)

    def oversized(self) -> bool:
        """The padded value is built inside the DHT's process: hivemind's pipe to that process cannot carry a
        message over ~64 KiB (its reader is non-blocking), and the attack is about the wire, not that pipe."""
        store = partial(
            _store_padded,
            key=metrics_key(self.run_id),
            subkey=owner_subkey(self.key),
            value=good_metrics(),
            pad=OVERSIZED_PAD,
            expiration=get_dht_time() + 120,
        )
        return bool(self.own.run_coroutine(store))

    def honest(self) -> bool:
        return self._store(self.own, owner_subkey(self.key), good_metrics())

    def close(self) -> None:
        for dht in (self.forger, self.own):
            dht.shutdown()
