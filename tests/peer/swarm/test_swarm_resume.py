"""``peer.run.state_format``: hivemind's state-download layout decoded by parameter name, a checkpoint's
``optimizer.safetensors`` round trip, and loading it into a DiLoCo peer (Adam moments and outer momentum)."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from peer.config import PeerSettings, RunConfig, SwarmSpec
from peer.errors import UserError
from peer.modeling import build_models, load_models, save_models
from peer.run.checkpoint_layout import TRAINING_STATE_FILE
from peer.run.state_format import (
    OPTIMIZER_FILE,
    SwarmState,
    check_shapes,
    checkpoint_training_state,
    decode_wire_state,
    read_checkpoint_state,
    wire_names,
    write_optimizer_file,
)
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht
from peer.swarm.starting_state import StartingPoint, resume_swarm_state
from peer.trainer import param_groups
from peer.trainer.recipe import optimizer_layout, run_optimizer_factories

SLOTS = ("exp_avg", "exp_avg_sq", "step")


def diloco_config(run_id: str) -> RunConfig:
    cfg = RunConfig(run_id=run_id)
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.ffn_size = 32, 1, 2, 64
    cfg.model.max_position_embeddings = 32
    cfg.train.warmup_steps = 0
    cfg.swarm = SwarmSpec(averaging="diloco", inner_steps=4, target_batch_size=4)
    return cfg


def peer_optimizer(dht, cfg, models):
    params = models.parameters()
    return build_swarm_optimizer(
        dht, cfg.run_id, cfg.swarm, param_groups(params, cfg.train.weight_decay), *run_optimizer_factories(cfg), 4
    )


def state_of(opt, models) -> tuple[dict, dict]:
    averager = opt.opt.state_averager
    opt_params = [p for group in averager.optimizer.param_groups for p in group["params"]]
    names = wire_names(opt, list(models.named_parameters()))
    moments = {
        n: {k: averager.optimizer.state[p][k].clone() for k in SLOTS} for n, p in zip(names, opt_params, strict=True)
    }
    momentum = {n: m.clone() for n, m in zip(names, opt.outer.momentum, strict=True)}
    return moments, momentum


@pytest.mark.timeout(180)
def test_diloco_state_survives_wire_decode_checkpoint_and_resume(tmp_path):
    cfg = diloco_config("resume-diloco")
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]))
    models = build_models(cfg.model, vocab_size=100, seed=1)
    opt = resumed_opt = None
    try:
        opt = peer_optimizer(dht, cfg, models)
        params = models.parameters()
        sum(p.float().pow(2).sum() + p.float().sum() for p in params).backward()
        assert not opt.step(4)  # a local (inner) step: Adam moments move, no outer round yet
        opt.zero_grad()
        generator = torch.Generator().manual_seed(3)
        for buffer in opt.outer.momentum:  # as after outer rounds
            buffer.copy_(torch.randn(buffer.shape, generator=generator))
        opt.start_at(7)
        moments, momentum = state_of(opt, models)

        # the coordinator's side: what a state download carries, decoded onto a model of its own
        metadata, tensors, _ = opt.opt.state_averager.get_current_state()
        template = build_models(cfg.model, vocab_size=100, seed=2)
        named = list(template.named_parameters())
        order, structure = optimizer_layout([p for _, p in named], cfg)
        names = [named[i][0] for i in order]
        state = decode_wire_state(metadata, tensors, names, structure, num_extras=len(names))
        assert state.step == 7 and state.optimizer.keys() == moments.keys()
        for name in names:
            assert torch.equal(state.outer_momentum[name], momentum[name]), name
            for key in SLOTS:
                assert torch.equal(state.optimizer[name][key], moments[name][key]), (name, key)

        # the checkpoint files, read back by parameter name
        with torch.no_grad():
            for name, p in named:
                p.copy_(state.parameters[name])
        save_models(template, tmp_path)
        write_optimizer_file(state, tmp_path)
        (tmp_path / TRAINING_STATE_FILE).write_text(json.dumps(checkpoint_training_state(state)))
        loaded = load_models(tmp_path)
        from_disk = read_checkpoint_state(tmp_path, list(loaded.named_parameters()))
        assert from_disk.step == 7 and from_disk.optimizer.keys() == state.optimizer.keys()
        assert all(torch.equal(from_disk.outer_momentum[n], momentum[n]) for n in names)

        # a fresh peer starts from the checkpoint dir: moments, momentum, step, parameters and its outer anchor
        new_cfg = diloco_config("resume-diloco-new")  # a run_id of its own, so both peers fit on one DHT
        resumed_opt = peer_optimizer(dht, new_cfg, loaded)
        start = StartingPoint(loaded, tmp_path)
        resume_swarm_state(resumed_opt, start, new_cfg, dht, threading.Event(), None, tmp_path / "work")
        assert resumed_opt.global_step == 7
        got_moments, got_momentum = state_of(resumed_opt, loaded)
        for name in names:
            assert torch.equal(got_momentum[name], momentum[name]), name
            for key in SLOTS:
                assert torch.equal(got_moments[name][key], moments[name][key]), (name, key)
        for (name, mine), theirs in zip(loaded.named_parameters(), models.parameters(), strict=True):
            assert torch.equal(mine, theirs), name
        for anchor, p in zip(resumed_opt.outer.anchor, resumed_opt.outer.params, strict=True):
            assert torch.equal(anchor, p)
    finally:
        for o in (opt, resumed_opt):
            if o is not None:
                o.shutdown()
        dht.shutdown()


def test_an_optimizer_layout_that_does_not_fit_is_refused():
    cfg = diloco_config("layout")
    models = build_models(cfg.model, vocab_size=100, seed=1)
    named = list(models.named_parameters())
    order, structure = optimizer_layout([p for _, p in named], cfg)
    names = [named[i][0] for i in order]
    metadata = {"epoch": 3, "optimizer_metadata": [{"type": "value", "value": 0.1}] * 5}
    tensors = [p.detach() for _, p in named]
    with pytest.raises(UserError, match="this run's optimizer"):
        decode_wire_state(metadata, [tensors[i] for i in order], names, structure, num_extras=0)
    with pytest.raises(UserError, match="expected at least"):
        decode_wire_state(metadata, tensors[:3], names, structure, num_extras=0)


def test_shapes_of_a_state_must_match_the_model():
    state = SwarmState(step=1, parameters={"w": torch.zeros(2, 3)}, optimizer={"w": {"exp_avg": torch.zeros(3, 2)}})
    with pytest.raises(UserError, match="optimizer state of w"):
        check_shapes(state, {"w": torch.Size([2, 3])})
    with pytest.raises(UserError, match="does not match"):
        check_shapes(state, {"w": torch.Size([4, 3])})
    check_shapes(SwarmState(step=1, parameters={"w": torch.zeros(2, 3)}), {"w": torch.Size([2, 3])})


def test_a_checkpoint_without_optimizer_file_resumes_only_the_step(tmp_path):
    cfg = diloco_config("noopt")
    models = build_models(cfg.model, vocab_size=100, seed=1)
    save_models(models, tmp_path)
    (tmp_path / TRAINING_STATE_FILE).write_text(json.dumps({"step": 4}))
    state = read_checkpoint_state(tmp_path, list(models.named_parameters()))
    assert state.step == 4 and state.optimizer == {} and state.outer_momentum == {}
    assert not (tmp_path / OPTIMIZER_FILE).exists()
