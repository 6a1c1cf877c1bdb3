"""peer.swarm.overrides.allreduce with ``blockwise4bit``: real hivemind averagers on in-process DHT nodes (loopback)
average 4-bit pseudo-gradients and leave the round with the same values, because the reducer's reply carries the
average itself. With hivemind's reply (``average - part``, in 4 bits) each peer's result carries its own error of
encoding that difference: the two peers ended 8.8e-4 apart (measured; Student-t values of scale 1e-3), which
fails the 1e-9 below."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from peer.swarm.blockwise4bit import Blockwise4BitQuantization
from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager
from tests.peer.swarm.loopback import two_dht_nodes

SIZES = (5000, 300)  # not whole blocks; each peer reduces a part of the 5000 (butterfly)


@pytest.fixture
def dhts():
    with two_dht_nodes() as nodes:
        yield nodes


def pseudo_gradients(seed: int) -> list[torch.Tensor]:
    """As error feedback sends them: already on the codec's grid."""
    torch.manual_seed(seed)
    codec = Blockwise4BitQuantization()
    return [codec.roundtrip(torch.distributions.StudentT(3.0).sample((n,)) * 1e-3) for n in SIZES]


def _averager(dht, values: list[torch.Tensor]) -> GuardedStateAverager:
    return GuardedStateAverager(
        guard=AveragerGuard(),
        dht=dht,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        params=[torch.nn.Parameter(v.clone()) for v in values],
        compression=Blockwise4BitQuantization(),
        prefix="replies_test",
        target_group_size=2,
        min_group_size=2,
        min_matchmaking_time=2.0,
        request_timeout=1.0,
        start=True,
    )


@pytest.mark.timeout(300)
def test_two_peers_leave_a_4bit_round_with_the_same_average(dhts):
    mine, theirs = pseudo_gradients(1), pseudo_gradients(2)
    mean = [(a + b) / 2 for a, b in zip(mine, theirs, strict=True)]
    averagers = [_averager(dht, values) for dht, values in zip(dhts, (mine, theirs), strict=True)]
    try:
        for _attempt in range(3):  # a round that found no group changes nothing: retry (matchmaking on busy cores)
            with ThreadPoolExecutor(2) as pool:
                opts = dict(averaging_round=True, averaging_opts=dict(timeout=60))
                for future in [pool.submit(a.step, **opts) for a in averagers]:
                    future.result()
            results = [[p.detach().clone() for p in a.main_parameters] for a in averagers]
            if not any(torch.equal(r[0], start[0]) for r, start in zip(results, (mine, theirs), strict=True)):
                break
        else:
            pytest.fail("the two averagers did not average in 3 attempts")
        first, second = results
        for a, b, m in zip(first, second, mean, strict=True):
            # the same average on both, up to the delta rule's float rounding (own + (average - own))
            assert float((a - b).abs().max()) <= 1e-9
            # the average of the parts, within half a 4-bit step of the reply (absmax / 14, per tensor here)
            assert float((a - m).abs().max()) <= float(m.abs().max()) / 14 * (1 + 1e-6)
    finally:
        for averager in averagers:
            averager.shutdown()
