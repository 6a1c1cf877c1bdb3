"""In-process hivemind DHT nodes on loopback, each shut down on leaving: one, or two with the second bootstrapped
from the first. What the tests of real averagers (pairs, state extras, state rounds) run on: ``TolerantDHT``, as
the product runs (an averager that exits must not take the DHT process with it)."""

from contextlib import contextmanager

from peer.swarm.overrides.dht_process import TolerantDHT


@contextmanager
def one_dht_node(**kwargs):
    dht = TolerantDHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], **kwargs)
    try:
        yield dht
    finally:
        dht.shutdown()


@contextmanager
def two_dht_nodes():
    with one_dht_node() as first, one_dht_node(initial_peers=first.get_visible_maddrs()) as second:
        yield first, second
