"""``load_state_from_swarm`` (what the coordinator calls) against a real peer's hivemind state averager."""

from __future__ import annotations

import pytest
import torch

from peer.config import RunConfig, SwarmSpec
from peer.modeling import build_models
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.metrics import make_validators
from peer.swarm.state import load_state_from_swarm
from peer.trainer import make_optimizer, make_scheduler, param_groups


def tiny_config() -> RunConfig:
    cfg = RunConfig(run_id="statetest")
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.ffn_size = 32, 1, 2, 64
    cfg.model.max_position_embeddings = 32
    cfg.swarm = SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], target_batch_size=8, matchmaking_time=1.0)
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_coordinator_downloads_the_swarm_parameters_and_step():
    cfg = tiny_config()
    signing = make_validators(cfg.run_id)
    peer_dht = start_dht(cfg.swarm, signing.validators)
    peer_models = build_models(cfg.model, vocab_size=100, seed=1)
    params = peer_models.parameters()
    opt = build_swarm_optimizer(
        peer_dht,
        cfg.run_id,
        cfg.swarm,
        param_groups(params, cfg.train.weight_decay),
        lambda p: make_optimizer(p, cfg.train),
        lambda o: make_scheduler(o, cfg.train),
        batch_size=4,
    )
    opt.start_at(7)  # as if resumed at global step 7
    coordinator_dht = start_dht(SwarmSpec(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=visible_maddrs(peer_dht)))
    try:
        models = build_models(cfg.model, vocab_size=100, seed=2)
        assert not torch.allclose(models.parameters()[1], params[1], rtol=1e-2)
        step = load_state_from_swarm(coordinator_dht, cfg, models, timeout=60)
        assert step == 7
        # hivemind serves its offloaded master copies, which its optimizer initialisation (a zero-gradient AdamW
        # step) moved by lr * weight_decay * p ~ 5e-6 p: equal up to that, and far from the seed-2 initialisation
        for mine, theirs in zip(models.parameters(), params, strict=True):
            assert torch.allclose(mine, theirs.detach(), rtol=1e-5, atol=1e-7)
    finally:
        coordinator_dht.shutdown()
        opt.shutdown()
        peer_dht.shutdown()


@pytest.mark.timeout(120)
def test_no_peer_with_state_gives_none_within_the_timeout():
    cfg = tiny_config()
    dht = start_dht(cfg.swarm)
    try:
        assert load_state_from_swarm(dht, cfg, build_models(cfg.model, vocab_size=100, seed=2), timeout=3) is None
    finally:
        dht.shutdown()
