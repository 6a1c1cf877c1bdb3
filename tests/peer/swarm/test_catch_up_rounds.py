"""A peer out of sync downloads the swarm's state without first waiting out a background state round that has
found no group (the survivor of a killed partner did, for ``averaging_timeout``, in the ``peer_kill`` scenario)."""

from __future__ import annotations

import logging

import hivemind
import pytest
import torch
from hivemind.averaging.control import AveragingStage

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.trainer import make_optimizer

ROUND_TIMEOUT = 60.0  # without the call-off, hivemind waits this long for the round, which then fails unaided


@pytest.mark.timeout(180)
def test_a_catching_up_peer_calls_off_its_state_round_that_found_no_group_and_downloads(caplog):
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    opt = None
    try:
        spec = SwarmSpec(
            host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            matchmaking_time=1.0,
            averaging_timeout=ROUND_TIMEOUT,
            load_state_timeout=10.0,
        )
        model = torch.nn.Linear(4, 2)
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw"))  # noqa: E731
        opt = build_swarm_optimizer(dht, "catch-up", spec, list(model.parameters()), factory, None, 4)
        averager = opt.opt.state_averager
        # a background state round as hivemind begins one at a global step: alone, it looks for a group until timeout
        averager.step(averaging_round=True, delay_averaging=True, averaging_opts=dict(timeout=ROUND_TIMEOUT))
        (pending,) = averager.pending_updates
        round_control = _wait_for_round(averager)
        assert round_control.stage == AveragingStage.LOOKING_FOR_GROUP

        with caplog.at_level(logging.INFO, logger="peer.swarm.averagers"):
            opt.opt.load_state_from_peers()  # hivemind's catch-up path: waits for delayed updates, then downloads

        assert round_control.cancelled()
        assert pending.done(), "the download returned while the background round was still running"
        assert "called off 1 state round(s) still looking for a group" in caplog.text
        # a round that found no group changes nothing: the delta rule adds (average - ours) = 0
        before = [p.detach().clone() for p in model.parameters()]
        averager.step(apply_delayed_updates=True)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()


def _wait_for_round(averager, attempts: int = 200):
    """The handle of the round ``averager``'s executor began (``CancellableRounds`` keeps it), once it exists."""
    import time

    for _ in range(attempts):
        rounds = getattr(averager, "_background_rounds", [])
        if rounds and rounds[-1].stage != AveragingStage.IDLE:
            return rounds[-1]
        time.sleep(0.05)
    raise AssertionError("the background state round never began looking for a group")
