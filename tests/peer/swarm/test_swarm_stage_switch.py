"""The swarm's growth switch (``peer.swarm.stage_switch``) on one real peer: a real DHT, real sync hivemind
optimizers (the first stage's, then the next stage's under its own prefix) and ``train_loop`` itself, on a tiny
ELECTRA pair. What the two-peer test (test_swarm_growth.py) cannot see from outside: the switch keeps the held-out
loss (exact width growth), the hivemind optimizer of the new stage holds exactly the grown Adam state, and the step
and lr go on."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from peer.config import GrowthStage, ModelSpec, PeerSettings, RunConfig, StageModel, SwarmSpec, model_stages
from peer.errors import UserError
from peer.growth.midrun import grow_stage, pair_state
from peer.modeling import build_models
from peer.objectives import build_objective
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht
from peer.swarm.loop import LoopOptions, LoopParts, train_loop
from peer.swarm.metrics import fetch_metrics, make_validators
from peer.swarm.shutdown import StopSignal
from peer.swarm.stage_fit import Memory
from peer.swarm.stage_keys import stage_prefix
from peer.swarm.stage_switch import StageSwitcher, named_optimizer_state
from peer.trainer import param_groups
from peer.trainer.recipe import run_optimizer_factories
from tests.peer.trainer.test_loop import VOCAB, batches

RUN = "switchtest"
AT_STEP = 3


def run_config() -> RunConfig:
    cfg = RunConfig(run_id=RUN)
    cfg.model = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=32)
    cfg.growth.schedule = [GrowthStage(AT_STEP, StageModel(hidden_size=64, num_heads=4, ffn_size=128))]
    cfg.train.batch_size, cfg.train.lr, cfg.train.warmup_steps, cfg.train.total_steps = 4, 1e-3, 2, 20
    return cfg


def stage_builder(dht, cfg: RunConfig):
    """``(stage, params) -> the stage's started sync optimizer`` under the stage's DHT prefix, as the session builds
    it (``StageSwitcher.build``)."""
    spec = SwarmSpec(target_batch_size=4, matchmaking_time=1.0, averaging_timeout=5.0, compression="none")

    def build(stage: int, params: list):
        return build_swarm_optimizer(
            dht, stage_prefix(RUN, stage), spec, param_groups(params, cfg.train.weight_decay),
            *run_optimizer_factories(cfg), batch_size=4,
        )  # fmt: skip

    return build


def lr_of(opt) -> float:
    return opt.opt.state_averager.optimizer.param_groups[0]["lr"]


@pytest.mark.timeout(300)
def test_one_peer_switches_at_the_stage_step_with_the_loss_and_the_grown_adam_state_kept_and_trains_on():
    cfg = run_config()
    torch.manual_seed(1234)  # dropout draws from the global RNG
    models = build_models(cfg.model, VOCAB, seed=0)
    objective = build_objective(cfg, models)
    heldout = list(itertools.islice(batches(99), 3))
    signing = make_validators(RUN)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    build = stage_builder(dht, cfg)

    stop = StopSignal()
    opt = build(0, models.parameters())
    switcher = StageSwitcher(model_stages(cfg), 0, models, build, "stack", settle_timeout=5.0, current=opt)
    try:
        options = LoopOptions(max_global_steps=AT_STEP, show_status=False)
        train_loop(dht, RUN, signing, opt, LoopParts(models.parameters(), objective, batches(7)), stop, options)
        assert opt.global_step == AT_STEP
        stages = model_stages(cfg)
        expected_models, expected_states = grow_stage(
            copy.deepcopy(models), named_optimizer_state(opt, models), stages[0][1], stages[1][1], "stack"
        )
        before, lr_before = objective.evaluate(heldout), lr_of(opt)

        grown = switcher.switch(opt, stop)

        after = objective.evaluate(heldout)
        assert abs(after["loss"] / before["loss"] - 1) < 1e-3, (before, after)
        assert switcher.index == 1 and switcher.current is grown and grown.global_step == AT_STEP
        assert lr_of(grown) == pytest.approx(lr_before, rel=1e-9)
        c = models.discriminator.config
        assert (c.hidden_size, c.num_attention_heads, c.intermediate_size) == (64, 4, 128)
        assert grown.opt.run_id == f"{RUN}-stage1"
        want = pair_state(expected_models)
        for name, param in models.named_parameters():
            torch.testing.assert_close(param.detach().double(), want[name], rtol=1e-6, atol=1e-7)
        held = named_optimizer_state(grown, models)
        assert set(held) == set(expected_states)
        for name, state in held.items():
            assert float(state["step"]) == float(expected_states[name]["step"]) == AT_STEP + 1  # + hivemind's init
            for key in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(state[key].double(), expected_states[name][key], rtol=1e-6, atol=1e-12)

        parts = LoopParts(models.parameters(), objective, batches(8), stages=switcher)
        options = LoopOptions(max_global_steps=AT_STEP + 2, show_status=False, metrics_every=0.0)
        result = train_loop(dht, RUN, signing, grown, parts, stop, options)
        assert result.global_step == AT_STEP + 2 and torch.isfinite(torch.tensor(result.last_loss))
        (record,) = fetch_metrics(dht, RUN).values()
        assert record.stage == 1 and record.step == AT_STEP + 2
    finally:
        if switcher.current is not None:
            switcher.current.shutdown()
        dht.shutdown()


@pytest.mark.timeout(300)
def test_a_peer_whose_device_cannot_hold_the_next_stage_leaves_with_one_line_before_it_grows():
    cfg = run_config()
    torch.manual_seed(1234)
    models = build_models(cfg.model, VOCAB, seed=0)
    objective = build_objective(cfg, models)
    signing = make_validators(RUN)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    build = stage_builder(dht, cfg)

    def small_device(device: torch.device) -> Memory:  # this stage took 1 GiB; 1.5 GiB are free: the next needs ~3
        return Memory(footprint=2**30, free=3 * 2**29)

    opt = build(0, models.parameters())
    switcher = StageSwitcher(model_stages(cfg), 0, models, build, "stack", 5.0, current=opt, measure=small_device)
    try:
        parts = LoopParts(models.parameters(), objective, batches(7), stages=switcher)
        options = LoopOptions(max_global_steps=AT_STEP + 2, show_status=False)
        with pytest.raises(UserError) as refused:
            train_loop(dht, RUN, signing, opt, parts, StopSignal(), options)
        text = str(refused.value)
        assert "\n" not in text and text.startswith("this peer cannot hold growth stage 1 (") and "GiB free" in text
        assert switcher.index == 0 and switcher.current is opt and opt.global_step == AT_STEP  # nothing grown
        assert models.discriminator.config.hidden_size == 32
    finally:
        if switcher.current is not None:
            switcher.current.shutdown()  # what the session does when the switch refuses: the peer leaves cleanly
        dht.shutdown()
