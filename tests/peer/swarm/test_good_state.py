"""After a global step that left the parameters non-finite, the loop puts back the last good parameters *and* the
optimizer's moments: a corrupted second moment would otherwise make every later step non-finite again (the attack
bench's honest peers never trained)."""

from __future__ import annotations

import hivemind
import pytest
import torch

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.loop import GoodState, params_are_finite
from peer.trainer import make_optimizer


def _global_step(opt, model: torch.nn.Linear) -> None:
    model.zero_grad()
    model(torch.ones(4, 4)).square().sum().backward()
    assert opt.step(4), "each step should be a global step (target_batch_size 4)"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("with_moments", [True, False], ids=["parameters-and-moments", "parameters-only"])
def test_a_restore_after_a_non_finite_step_lets_the_next_step_be_finite_only_with_the_moments(with_moments):
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    opt = None
    try:
        spec = SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], target_batch_size=4, matchmaking_time=1.0)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        params = list(model.parameters())
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0))  # noqa: E731
        opt = build_swarm_optimizer(dht, "good-state", spec, params, factory, None, 4)
        _global_step(opt, model)
        good = GoodState(params, opt) if with_moments else GoodState(params)
        averager = opt.opt.state_averager
        with torch.no_grad():  # what a poisoned state round can leave: a negative second moment
            for group in averager.optimizer.param_groups:
                for param in group["params"]:
                    averager.optimizer.state[param]["exp_avg_sq"].fill_(-1.0)
        _global_step(opt, model)
        assert not params_are_finite(params)
        good.restore_into(opt, params)
        assert params_are_finite(params)
        _global_step(opt, model)
        assert params_are_finite(params) == with_moments
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()


@pytest.mark.timeout(180)
def test_a_restore_reaches_the_optimizers_offloaded_copies_which_the_next_step_copies_into_the_model():
    """Sync mode steps offloaded copies of the parameters and copies them into the model after every step: a
    restore of the model alone would be overwritten by the non-finite copies at the next step."""
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    opt = None
    try:
        spec = SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], target_batch_size=4, matchmaking_time=1.0)
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        params = list(model.parameters())
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0))  # noqa: E731
        opt = build_swarm_optimizer(dht, "good-state", spec, params, factory, None, 4)
        _global_step(opt, model)
        good = GoodState(params, opt)
        offloaded = [p for g in opt.opt.state_averager.optimizer.param_groups for p in g["params"]]
        assert not any(o is p for o in offloaded for p in params), "sync mode should step offloaded copies"
        with torch.no_grad():  # what a non-finite step leaves in them
            for copy in offloaded:
                copy.fill_(float("nan"))
        _global_step(opt, model)
        assert not params_are_finite(params)
        good.restore_into(opt, params)
        _global_step(opt, model)
        assert params_are_finite(params) and params_are_finite(offloaded)
    finally:
        if opt is not None:
            opt.shutdown()
        dht.shutdown()
