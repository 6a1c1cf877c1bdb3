"""A peer that leaves cleanly withdraws its state-sharing declaration at once, so a newcomer after the last peer
left goes straight to the coordinator's checkpoint instead of waiting out ``load_state_timeout`` on departed donors
(the ``all_leave`` fault scenario found that wait). Real DHT nodes and hivemind averagers on loopback."""

import time

import pytest

from peer.config import PeerSettings, RunConfig, SwarmSpec
from peer.modeling import build_models
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht
from peer.swarm.state import peers_hold_state
from peer.trainer import param_groups
from peer.trainer.recipe import run_optimizer_factories

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def tiny_config(run_id: str, averaging: str) -> RunConfig:
    cfg = RunConfig(run_id=run_id)
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.ffn_size = 32, 1, 2, 64
    cfg.model.max_position_embeddings = 32
    cfg.swarm = SwarmSpec(averaging=averaging, target_batch_size=4)
    return cfg


def _eventually(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return condition()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("averaging", ["sync", "diloco"])
def test_a_peer_leaving_cleanly_is_no_longer_a_state_donor(averaging):
    cfg = tiny_config(f"leave-{averaging}", averaging)
    donor_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    observer = start_dht(PeerSettings(host_maddrs=LOOPBACK, initial_peers=donor_dht_maddrs(donor_dht)))
    opt = None
    try:
        models = build_models(cfg.model, vocab_size=100, seed=1)
        groups = param_groups(models.parameters(), cfg.train.weight_decay)
        opt = build_swarm_optimizer(donor_dht, cfg.run_id, cfg.swarm, groups, *run_optimizer_factories(cfg), 4)
        assert _eventually(lambda: peers_hold_state(observer, cfg.run_id), 60), "the donor never declared itself"
        opt.shutdown()
        opt = None
        # the old declaration would stay visible for hivemind's declare_state_period (30 s); the withdrawal is a
        # DHT store, visible as soon as it lands
        assert _eventually(lambda: not peers_hold_state(observer, cfg.run_id), 10)
    finally:
        if opt is not None:
            opt.shutdown()
        observer.shutdown()
        donor_dht.shutdown()


def donor_dht_maddrs(dht) -> list[str]:
    return [str(addr) for addr in dht.get_visible_maddrs()]
