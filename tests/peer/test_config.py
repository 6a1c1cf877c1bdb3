import dataclasses
import json

import pytest
import yaml

from peer.config import (
    MOVED_TO_PEER,
    ConfigError,
    PeerSettings,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    without_peer_keys,
)


def test_defaults_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["run_id=abc", "train.lr=1e-4", "swarm.averaging=diloco"])
    assert cfg.run_id == "abc" and cfg.train.lr == 1e-4 and cfg.swarm.averaging == "diloco"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    assert load_config(path) == cfg
    assert load_config(None) == RunConfig()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key train.lrr"),
        ("model.hidden_size=1.5", "model.hidden_size: expected an integer"),
        ("objective.name=bert", "objective.name: 'bert' is not one of"),
        ("swarm.overlap_rounds=maybe", "swarm.overlap_rounds: expected true/false"),
        ("nonsense", "must look like section.key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, [override])
    assert "\n" not in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_the_published_run_config_holds_no_peer_setting_and_round_trips():
    published = config_to_dict(RunConfig())
    for path in MOVED_TO_PEER:
        section, key = path.split(".")
        assert key not in published[section] and key in {f.name for f in dataclasses.fields(PeerSettings)}
    assert config_from_dict(json.loads(json.dumps(published))) == RunConfig()  # as it travels (JSON over HTTP)


@pytest.mark.parametrize("key, flag", sorted(MOVED_TO_PEER.items()))
def test_a_peer_setting_in_a_run_config_file_is_one_line_naming_its_flag(tmp_path, key, flag):
    section, name = key.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"run_id": "old", section: {name: None}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert f"{key} is no longer part of the run config" in message and flag in message
    assert "\n" not in message


def test_peer_settings_in_a_published_config_are_dropped_and_named():
    old = config_to_dict(RunConfig())
    old["swarm"].update(host_maddrs=["/ip4/0.0.0.0/tcp/0"], client_mode=True, coordinator_url=None)
    kept, dropped = without_peer_keys(old)
    assert dropped == ["swarm.client_mode", "swarm.coordinator_url", "swarm.host_maddrs"]
    assert config_from_dict(kept) == RunConfig()
    assert "client_mode" in old["swarm"]  # the caller's dict is left as it was
    assert without_peer_keys(config_to_dict(RunConfig())) == (config_to_dict(RunConfig()), [])
