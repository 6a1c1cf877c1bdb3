"""Two in-process hivemind DHT nodes on loopback, the second bootstrapped from the first: what the tests of real
averagers (pairs, state extras) run on."""

from contextlib import contextmanager

import hivemind


@contextmanager
def two_dht_nodes():
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    try:
        second = hivemind.DHT(
            start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=first.get_visible_maddrs()
        )
        try:
            yield first, second
        finally:
            second.shutdown()
    finally:
        first.shutdown()
