"""Sync mode averages the optimizer's per-parameter statistics with the parameters (swarm.sync_optimizer_state):
which statistics an optimizer keeps is read off the optimizer itself, and they reach hivemind's state averager."""

from __future__ import annotations

import threading

import pytest
import torch

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.modes.sync import optimizer_statistics
from peer.trainer import make_optimizer
from tests.peer.swarm.loopback import one_dht_node, two_dht_nodes


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
    with one_dht_node() as dht:
        opt = None
        try:
            spec = SwarmSpec(sync_optimizer_state=enabled)
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


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("enabled", [True, False])
def test_one_state_round_makes_two_peers_adam_moments_equal_only_when_averaged(enabled):
    """The failure this is for: a peer whose moments differ (after part of a gradient round) keeps moving apart from
    identical averaged gradients. Two real state averagers with different parameters and moments run one round
    together: the parameters come out equal either way; the moments only with ``sync_optimizer_state``."""
    with two_dht_nodes() as (first, second):
        spec = SwarmSpec(
            sync_optimizer_state=enabled,
            compression="none",
            matchmaking_time=2.0,
            averaging_timeout=60.0,
        )
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw"))  # noqa: E731
        opts = []
        try:
            for seed, dht in enumerate((first, second)):
                torch.manual_seed(0)  # the same parameters
                model = torch.nn.Linear(4, 2)
                opts.append(build_swarm_optimizer(dht, "moments", spec, list(model.parameters()), factory, None, 4))
                averager = opts[-1].opt.state_averager
                with torch.no_grad():
                    for group in averager.optimizer.param_groups:
                        for param in group["params"]:
                            state = averager.optimizer.state[param]
                            state["exp_avg"].fill_(0.1 * (seed + 1))
                            state["exp_avg_sq"].fill_(1e-4 * (seed + 1))
                            param.add_(0.01 * seed)  # parameters apart too, to show that the round ran either way
            rounds = [threading.Thread(target=_one_state_round, args=(opt,)) for opt in opts]
            for thread in rounds:
                thread.start()
            for thread in rounds:
                thread.join(timeout=180)
            moments = [_moments(opt) for opt in opts]
            params = [
                [p.detach().clone() for g in o.opt.state_averager.optimizer.param_groups for p in g["params"]]
                for o in opts
            ]
            assert max((a - b).abs().max().item() for a, b in zip(*params, strict=True)) < 1e-6, "no round ran"
            spread = max((a - b).abs().max().item() for a, b in zip(*moments, strict=True))
            if enabled:
                assert spread < 1e-7, f"moments still {spread} apart after the round"
                assert torch.allclose(moments[0][0], torch.full_like(moments[0][0], 0.15))  # the mean of 0.1 and 0.2
            else:
                assert spread > 0.05, "moments were averaged although sync_optimizer_state is off"
        finally:
            for opt in opts:
                opt.shutdown()


def _one_state_round(opt) -> None:
    averager = opt.opt.state_averager
    averager.step(averaging_round=True, averaging_opts=dict(timeout=60.0))


def _moments(opt) -> list[torch.Tensor]:
    averager = opt.opt.state_averager
    params = [p for g in averager.optimizer.param_groups for p in g["params"]]
    return [averager.optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq") for p in params]
