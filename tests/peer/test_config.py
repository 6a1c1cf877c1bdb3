import pytest
import yaml

from peer.config import ConfigError, RunConfig, config_to_dict, load_config


def test_defaults_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["run_id=abc", "train.lr=1e-4", "swarm.initial_peers=[/ip4/127.0.0.1/tcp/1/p2p/X]"])
    assert cfg.run_id == "abc" and cfg.train.lr == 1e-4 and cfg.swarm.initial_peers == ["/ip4/127.0.0.1/tcp/1/p2p/X"]
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
        ("swarm.client_mode=maybe", "swarm.client_mode: expected true/false"),
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
