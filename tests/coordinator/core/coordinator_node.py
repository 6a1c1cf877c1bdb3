"""A run's store and the coordinator's DHT node on loopback, with the validators the coordinator runs (which count
the records they reject): what the tests of the monitor and the bans against real DHT nodes start."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.monitor import counting_validators
from coordinator.store import Store

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def run_store(path: Path, run: str, alive_window: float = 60.0, total_steps: int | None = None) -> Store:
    """A store at ``path`` with ``run`` opened (its config: the run id alone)."""
    store = Store(path, alive_window=alive_window)
    store.open_run(run, {"run_id": run}, total_steps=total_steps)
    return store


@dataclass
class CoordinatorNode:
    store: Store
    dht: hivemind.DHT
    signature: RSASignatureValidator  # the coordinator's own key (what signs its ban list)
    initial: list[str]  # the node's addresses, for other nodes to bootstrap from
    dhts: list[hivemind.DHT]  # the nodes to shut down at the end (the coordinator's first): a test adds its own


@contextmanager
def coordinator_node(path: Path, run: str) -> Iterator[CoordinatorNode]:
    """The store (``run_store``) and the coordinator's node; on leaving, every node in ``dhts`` is shut down, the
    last added first, then the store is closed."""
    dhts: list[hivemind.DHT] = []
    store = run_store(path, run)
    try:
        signature, validators = counting_validators(run, RSAPrivateKey())
        dht = hivemind.DHT(host_maddrs=LOOPBACK, record_validators=validators, start=True)
        dhts.append(dht)
        yield CoordinatorNode(store, dht, signature, [str(a) for a in dht.get_visible_maddrs()], dhts)
    finally:
        for node in reversed(dhts):
            node.shutdown()
        store.close()
