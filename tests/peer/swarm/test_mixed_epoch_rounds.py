"""A sync-mode state round (delta rule) whose peers began it at different epochs is applied by none of them; one at
the same epoch averages. Real hivemind state averagers on in-process DHT nodes (loopback).

The race this pins down deterministically: in ``test_sync_state_rounds_never_undo_an_optimizer_step`` a peer whose
previous round ended a few ms after its epoch transition began its next round one epoch later than the other
peer, and the two snapshots (one optimizer step apart) were averaged."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from hivemind.averaging.allreduce import AveragingMode
from hivemind.utils.serializer import MSGPackSerializer

from peer.swarm.overrides.guard import AveragerGuard
from peer.swarm.overrides.state_averager import GuardedStateAverager, gathered_epochs
from tests.peer.swarm.loopback import two_dht_nodes


@pytest.fixture
def dhts():
    with two_dht_nodes() as nodes:
        yield nodes


def _averager(dht, value: float) -> GuardedStateAverager:
    return GuardedStateAverager(
        guard=AveragerGuard(),
        dht=dht,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=0.1),
        params=[torch.nn.Parameter(torch.full((64,), value))],
        prefix="mixed_epochs_test",
        target_group_size=2,
        min_group_size=2,
        min_matchmaking_time=2.0,
        request_timeout=1.0,
        delta_rule_averaging=True,
        start=True,
    )


def _round(averagers, epochs) -> None:
    """One state round of both at the given epochs (``step`` blocks: one thread each), as hivemind's
    ``_update_global_epoch`` runs it (``gather=local_epoch``); a round that formed no group says nothing either way,
    so it is retried a bounded number of times (matchmaking on 2 busy cores)."""
    for _attempt in range(3):
        for averager, epoch in zip(averagers, epochs, strict=True):
            averager.local_epoch = epoch
        with ThreadPoolExecutor(2) as pool:
            opts = dict(averaging_round=True, averaging_opts=dict(timeout=60))
            for future in [pool.submit(a.step, **opts) for a in averagers]:
                future.result()
        controls = [a._background_rounds[-1][0] for a in averagers]
        if all(c.done() and not c.exception() and len(c.result()) == 2 for c in controls):
            return
    pytest.fail("the two averagers formed no group in 3 attempts")


def _values(averagers) -> list[float]:
    return [a.main_parameters[0].mean().item() for a in averagers]


@pytest.mark.timeout(300)
def test_a_round_of_two_epochs_is_applied_by_neither_and_one_of_the_same_epoch_averages(dhts):
    averagers = [_averager(dht, value) for dht, value in zip(dhts, (1.0, 3.0), strict=True)]
    try:
        _round(averagers, (9, 10))
        assert _values(averagers) == [1.0, 3.0]
        _round(averagers, (10, 10))
        assert _values(averagers) == pytest.approx([2.0, 2.0])
    finally:
        for averager in averagers:
            averager.shutdown()


def test_gathered_epochs_leave_out_aux_peers_and_mark_foreign_data():
    dumps = MSGPackSerializer.dumps
    gathered = [
        dumps([1.0, AveragingMode.NODE.value, dumps(7)]),
        dumps([1.0, AveragingMode.AUX.value, dumps(3)]),
        dumps([1.0, AveragingMode.CLIENT.value, dumps(7)]),
        dumps([1.0, AveragingMode.NODE.value, dumps(None)]),
    ]
    assert gathered_epochs(gathered, MSGPackSerializer) == [7, 7, "None"]
