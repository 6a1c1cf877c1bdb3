"""A peer out of sync downloads the swarm's state without first waiting out a background state round stuck looking
for a group (the survivor of a killed partner did, for ``averaging_timeout``, in the ``peer_kill`` scenario), and
without calling off a round that is about to assemble with a healthy partner (which would leave the partner
looking for a group until its own timeout)."""

from __future__ import annotations

import logging
import threading
import time

import hivemind
import pytest
import torch
from hivemind.averaging.control import AveragingStage

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.trainer import make_optimizer
from tests.peer.swarm.loopback import one_dht_node, two_dht_nodes

ROUND_TIMEOUT = 60.0  # without the call-off, hivemind waits this long for the round, which then fails unaided
MATCHMAKING = 1.0  # so a stuck round is called off after matchmaking_time + 2 s = 3 s


def _spec() -> SwarmSpec:
    return SwarmSpec(
        compression="none",
        matchmaking_time=MATCHMAKING,
        averaging_timeout=ROUND_TIMEOUT,
        load_state_timeout=10.0,
    )


def _optimizer(dht: hivemind.DHT, seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw"))  # noqa: E731
    return build_swarm_optimizer(dht, "catch-up", _spec(), list(model.parameters()), factory, None, 4), model


def _begin_state_round(averager) -> None:
    """A background state round as hivemind begins one at a global step."""
    averager.step(averaging_round=True, delay_averaging=True, averaging_opts=dict(timeout=ROUND_TIMEOUT))


def _round_control(averager, attempts: int = 200):
    """The handle of the round ``averager``'s executor began (``CancellableRounds`` keeps it), once it exists."""
    for _ in range(attempts):
        rounds = getattr(averager, "_background_rounds", [])
        if rounds and rounds[-1][0].stage != AveragingStage.IDLE:
            return rounds[-1][0]
        time.sleep(0.05)
    raise AssertionError("the background state round never began looking for a group")


@pytest.mark.timeout(180)
def test_a_catching_up_peer_calls_off_its_state_round_stuck_without_a_group_and_downloads(caplog):
    with one_dht_node() as dht:
        opt = None
        try:
            opt, model = _optimizer(dht, seed=0)
            averager = opt.opt.state_averager
            _begin_state_round(averager)  # alone: it looks for a group until ROUND_TIMEOUT
            (pending,) = averager.pending_updates
            round_control = _round_control(averager)
            assert round_control.stage == AveragingStage.LOOKING_FOR_GROUP

            with caplog.at_level(logging.INFO, logger="peer.swarm.overrides.optimizer"):
                opt.opt.load_state_from_peers()  # hivemind's catch-up path: waits for delayed updates, then downloads

            assert round_control.cancelled()
            assert pending.done(), "the download returned while the background round was still running"
            assert "called off 1 state round(s) that found no group in 3 s" in caplog.text
            # a round that found no group changes nothing: the delta rule adds (average - ours) = 0
            before = [p.detach().clone() for p in model.parameters()]
            averager.step(apply_delayed_updates=True)
            assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        finally:
            if opt is not None:
                opt.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_catching_up_peer_lets_a_round_with_a_healthy_partner_finish_for_both():
    with two_dht_nodes() as (first, second):
        opts = []
        try:
            (behind, _), (partner, partner_model) = _optimizer(first, seed=0), _optimizer(second, seed=1)
            opts = [behind, partner]
            for opt in opts:
                _begin_state_round(opt.opt.state_averager)
            controls = [_round_control(opt.opt.state_averager) for opt in opts]
            (partner_round,) = partner.opt.state_averager.pending_updates

            catch_up = threading.Thread(target=behind.opt.load_state_from_peers)
            catch_up.start()
            catch_up.join(timeout=120)
            assert not catch_up.is_alive()
            # the partner's round must not be left looking for a group until its timeout (60 s)
            partner_round.result(timeout=30)

            assert not any(control.cancelled() for control in controls)
            assert all(control.done() and control.exception() is None for control in controls), "the round failed"
            before = [p.detach().clone() for p in partner_model.parameters()]
            partner.opt.state_averager.step(apply_delayed_updates=True)
            moved = max((a - b).abs().max().item() for a, b in zip(before, partner_model.parameters(), strict=True))
            assert moved > 1e-4, "the partner's round ran but averaged nothing (the two peers start apart)"
        finally:
            for opt in opts:
                opt.shutdown()
