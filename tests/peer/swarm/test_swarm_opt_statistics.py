"""Sync mode averages the optimizer's per-parameter statistics with the parameters (swarm.sync_optimizer_state):
which statistics an optimizer keeps is read off the optimizer itself, and they reach hivemind's state averager."""

from __future__ import annotations

import hivemind
import pytest
import torch

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer, optimizer_statistics
from peer.trainer import make_optimizer


@pytest.mark.parametrize(
    "factory,expected",
    [
        (lambda p: make_optimizer(p, TrainSpec(optimizer="adamw")), ("exp_avg", "exp_avg_sq")),
        (lambda p: make_optimizer(p, TrainSpec(optimizer="lamb")), ("exp_avg", "exp_avg_sq")),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), ("momentum_buffer",)),
        (lambda p: torch.optim.SGD(p, lr=0.1), ()),
    ],
    ids=["adamw", "lamb", "sgd-momentum", "sgd"],
)
def test_the_statistics_are_the_state_tensors_shaped_like_their_parameter(factory, expected):
    assert optimizer_statistics(factory) == expected


@pytest.mark.parametrize("enabled,expected", [(True, ("exp_avg", "exp_avg_sq")), (False, ())])
def test_the_sync_state_averager_averages_adams_moments_unless_switched_off(enabled, expected):
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    opt = None
    try:
        spec = SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], sync_optimizer_state=enabled)
        model = torch.nn.Linear(4, 2)
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw"))  # noqa: E731
        opt = build_swarm_optimizer(dht, "opt-stats", spec, list(model.parameters()), factory, None, 4)
        averager = opt.opt.state_averager
        assert tuple(averager.opt_keys_for_averaging) == expected
        with averager.get_tensors() as averaged:  # parameters, then each statistic per parameter
            assert len(averaged) == 2 * (1 + len(expected))
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()
