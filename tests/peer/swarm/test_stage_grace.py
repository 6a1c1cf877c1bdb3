"""After a growth switch with ``growth.switch_grace`` > 0, a peer goes on serving the old stage's final state under
the old stage's keys (``peer.swarm.stage_grace``): a client-mode download of the old stage, as the coordinator's
checkpoint pull makes it, gets exactly the parameters and step the peer grew from; ``close`` withdraws it. One real
peer (real DHT, real sync hivemind optimizers, ``train_loop``) on a tiny ELECTRA pair."""

from __future__ import annotations

import time

import hivemind
import pytest
import torch

from peer.config import PeerSettings, model_stages
from peer.modeling import build_models
from peer.objectives import build_objective
from peer.swarm.dht import start_dht
from peer.swarm.loop import LoopOptions, LoopParts, train_loop
from peer.swarm.metrics import make_validators
from peer.swarm.shutdown import StopSignal
from peer.swarm.stage_switch import StageSwitcher
from peer.swarm.state import load_state_from_swarm, peers_hold_state
from tests.peer.swarm.test_swarm_stage_switch import AT_STEP, RUN, run_config, stage_builder
from tests.peer.trainer.test_loop import VOCAB, batches


@pytest.mark.timeout(300)
def test_the_old_stages_final_state_stays_downloadable_for_the_grace_then_is_withdrawn():
    cfg = run_config()
    models = build_models(cfg.model, VOCAB, seed=0)
    objective = build_objective(cfg, models)
    signing = make_validators(RUN)
    dht = start_dht(PeerSettings(host_maddrs=["/ip4/127.0.0.1/tcp/0"]), signing.validators)
    client = hivemind.DHT(
        initial_peers=[str(a) for a in dht.get_visible_maddrs()], host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True
    )
    build = stage_builder(dht, cfg)

    stop = StopSignal()
    opt = build(0, models.parameters())
    switcher = StageSwitcher(model_stages(cfg), 0, models, build, "stack", 5.0, current=opt, grace=120.0)
    try:
        options = LoopOptions(max_global_steps=AT_STEP, show_status=False)
        train_loop(dht, RUN, signing, opt, LoopParts(models.parameters(), objective, batches(7)), stop, options)
        final = {name: p.detach().clone() for name, p in models.named_parameters()}
        switcher.switch(opt, stop)
        assert models.discriminator.config.hidden_size == 64  # grown: the model no longer holds the old state

        pulled = build_models(cfg.model, VOCAB, seed=5)  # the old stage's shapes, other values
        state = load_state_from_swarm(client, cfg, pulled, timeout=60, prefix=RUN)
        assert state is not None and state.step == AT_STEP
        for name, p in pulled.named_parameters():
            assert torch.equal(p, final[name]), name
        assert state.optimizer, "the old stage's Adam state came with it"

        switcher.close()  # the peer leaves (or the grace ends): the old stage's state is no longer offered
        deadline = time.monotonic() + 30
        while peers_hold_state(client, RUN) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not peers_hold_state(client, RUN)
    finally:
        switcher.close()
        if switcher.current is not None:
            switcher.current.shutdown()
        client.shutdown()
        dht.shutdown()
