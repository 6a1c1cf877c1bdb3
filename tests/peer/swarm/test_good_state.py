"""After a global step that left the parameters non-finite, the loop's restore must let the *next* step be finite:
it reaches the optimizer's offloaded copies (which sync mode steps and copies into the model) and heals the moments
(a negative or non-finite second moment makes every later step non-finite). Without either, the attack bench's honest
peers were "restored" after every global step and never trained."""

from __future__ import annotations

import hivemind
import pytest
import torch

from peer.config import SwarmSpec, TrainSpec
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.good_state import GoodState, heal_optimizer_state, params_are_finite
from peer.trainer import make_optimizer


def _global_step(opt, model: torch.nn.Linear) -> None:
    model.zero_grad()
    model(torch.ones(4, 4)).square().sum().backward()
    assert opt.step(4), "each step should be a global step (target_batch_size 4)"


@pytest.fixture
def swarm_opt():
    """A one-peer sync swarm optimizer (offloaded AdamW) over a small linear model, every step a global step."""
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    opts = []
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    params = list(model.parameters())

    def build():
        spec = SwarmSpec(target_batch_size=4, matchmaking_time=1.0)
        factory = lambda p: make_optimizer(p, TrainSpec(optimizer="adamw", warmup_steps=0))  # noqa: E731
        opts.append(build_swarm_optimizer(dht, "good-state", spec, params, factory, None, 4))
        return opts[-1], model, params

    try:
        yield build
    finally:
        for opt in opts:
            opt.shutdown()
        dht.shutdown()


def _optimizer_params(opt) -> list[torch.Tensor]:
    return [p for g in opt.opt.state_averager.optimizer.param_groups for p in g["params"]]


@pytest.mark.timeout(180)
def test_a_restore_reaches_the_optimizers_offloaded_copies_which_the_next_step_copies_into_the_model(swarm_opt):
    opt, model, params = swarm_opt()
    _global_step(opt, model)
    good = GoodState(params)
    offloaded = _optimizer_params(opt)
    assert not any(o is p for o in offloaded for p in params), "sync mode should step offloaded copies"
    with torch.no_grad():  # what a non-finite step leaves in them
        for copy in offloaded:
            copy.fill_(float("nan"))
    _global_step(opt, model)
    assert not params_are_finite(params)
    good.restore_into(opt, params)
    assert all(torch.equal(p, c) for p, c in zip(params, good.copies, strict=True))
    _global_step(opt, model)
    assert params_are_finite(params) and params_are_finite(offloaded)


@pytest.mark.timeout(180)
def test_a_restore_heals_a_negative_second_moment_so_the_next_step_is_finite(swarm_opt):
    opt, model, params = swarm_opt()
    _global_step(opt, model)
    good = GoodState(params)
    optimizer = opt.opt.state_averager.optimizer
    with torch.no_grad():  # what a poisoned state round can leave: a negative second moment in one tensor
        optimizer.state[_optimizer_params(opt)[0]]["exp_avg_sq"].fill_(-1.0)
    _global_step(opt, model)
    assert not params_are_finite(params)
    healed = good.restore_into(opt, params)
    _global_step(opt, model)
    assert params_are_finite(params)
    assert healed == params[0].numel()  # exactly the poisoned tensor's entries were reset


def test_healing_resets_only_the_entries_no_step_recovers_from():
    x = torch.nn.Parameter(torch.zeros(4))
    adam = torch.optim.Adam([x], lr=0.1)
    x.grad = torch.ones(4)
    adam.step()
    state = adam.state[x]
    sound_avg, sound_sq = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    with torch.no_grad():
        state["exp_avg"][1] = float("inf")
        state["exp_avg_sq"][2] = -1.0
    assert heal_optimizer_state(adam) == 2
    assert state["exp_avg"][[1, 2]].eq(0).all() and state["exp_avg_sq"][[1, 2]].eq(0).all()
    assert torch.equal(state["exp_avg"][[0, 3]], sound_avg[[0, 3]])
    assert torch.equal(state["exp_avg_sq"][[0, 3]], sound_sq[[0, 3]])
    assert state["step"].item() == 1  # the step count is not a per-parameter moment: untouched
    assert heal_optimizer_state(adam) == 0
    x.grad = torch.ones(4)
    adam.step()
    assert torch.isfinite(x).all()


@pytest.mark.timeout(180)
def test_save_keeps_the_latest_healthy_step_in_the_same_host_buffers(swarm_opt):
    """The loop saves after every healthy global step: one set of host buffers, rewritten, and a restore puts back
    the latest save, not the first."""
    opt, model, params = swarm_opt()
    good = GoodState(params)
    buffers = [c.data_ptr() for c in good.copies]
    _global_step(opt, model)
    latest = [p.detach().clone() for p in params]
    assert not all(torch.equal(p, c) for p, c in zip(latest, good.copies, strict=True)), "the step moved nothing"
    good.save(params)
    assert [c.data_ptr() for c in good.copies] == buffers
    with torch.no_grad():
        for p in params:
            p.fill_(float("nan"))
    good.restore_into(opt, params)
    assert all(torch.equal(p, want) for p, want in zip(params, latest, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA only: page-locked buffers and asynchronous saves")
def test_on_cuda_the_buffers_are_page_locked_and_a_restore_waits_for_the_last_save():
    params = [torch.randn(1024, 1024, device="cuda"), torch.randn(4096, device="cuda")]
    good = GoodState(params)
    assert all(c.is_pinned() for c in good.copies)
    want = [p.cpu() for p in params]
    good.save(params)
    with torch.no_grad():
        for p in params:
            p.zero_()  # queued after the save's copies on the same stream
    good._fence.wait()
    assert all(torch.equal(c, w) for c, w in zip(good.copies, want, strict=True))
