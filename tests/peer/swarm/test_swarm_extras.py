"""DiLoCo's outer momentum rides in the state averager's ``extra_tensors``: shared with joiners, never averaged
(``GuardedStateAverager(average_extras=False)``). Real hivemind averagers on in-process DHT nodes (loopback)."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager
from tests.peer.swarm.loopback import two_dht_nodes


@pytest.fixture
def dhts():
    with two_dht_nodes() as nodes:
        yield nodes


def _averager(dht, value: float, momentum: float, average_extras: bool) -> GuardedStateAverager:
    params = [torch.nn.Parameter(torch.full((64,), value)), torch.nn.Parameter(torch.full((8,), value))]
    extras = [torch.full_like(p, momentum) for p in params]
    return GuardedStateAverager(
        guard=AveragerGuard(),
        average_extras=average_extras,
        dht=dht,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        params=params,
        extra_tensors=extras,
        prefix="extras_test",
        target_group_size=2,
        min_group_size=2,
        min_matchmaking_time=2.0,
        request_timeout=1.0,
        start=True,
    )


def _average(first, second) -> None:
    """One averaging round of both (``step`` blocks: one thread each); a round that formed no group leaves the
    parameters as they were, so retry a bounded number of times (matchmaking on 2 busy cores)."""
    for _attempt in range(3):
        with ThreadPoolExecutor(2) as pool:
            opts = dict(averaging_round=True, averaging_opts=dict(timeout=60))
            rounds = [pool.submit(a.step, **opts) for a in (first, second)]
            for future in rounds:
                future.result()
        if all(torch.allclose(a.main_parameters[0], torch.full((64,), 2.0)) for a in (first, second)):
            return
    pytest.fail("the two averagers did not average in 3 attempts")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("average_extras", [False, True])
def test_extras_are_downloaded_and_averaged_only_when_asked(dhts, average_extras):
    averagers = [_averager(dht, v, m, average_extras) for dht, v, m in zip(dhts, (1.0, 3.0), (10.0, 30.0), strict=True)]
    try:
        params = len(averagers[0].main_parameters)
        with averagers[0].get_tensors() as averaged:  # what an all-reduce round sends
            assert len(averaged) == (2 * params if average_extras else params)
        _, state, _ = averagers[1].get_current_state()  # what a joiner downloads: parameters, extras, optimizer
        assert torch.equal(state[params], torch.full((64,), 30.0))
        _average(*averagers)
        for averager, momentum in zip(averagers, (10.0, 30.0), strict=True):
            assert torch.allclose(averager.main_parameters[0], torch.full((64,), 2.0))
            expected = 20.0 if average_extras else momentum
            assert torch.allclose(averager.extra_tensors[0], torch.full((64,), expected))
    finally:
        for averager in averagers:
            averager.shutdown()
