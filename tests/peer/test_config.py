import dataclasses
import json

import pytest
import yaml

from peer.config import (
    MOVED_TO_PEER,
    ConfigError,
    GrowthStage,
    PeerSettings,
    RunConfig,
    StageModel,
    config_from_dict,
    config_to_dict,
    load_config,
    model_stages,
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


SCHEDULE_YAML = """
run_id: grows
model: {hidden_size: 64, num_heads: 2, ffn_size: 128, num_layers: 2}
growth:
  schedule:
    - at_step: 200
      model: {hidden_size: 128, num_heads: 4, ffn_size: 256}
    - at_step: 500
      model: {num_layers: 3}
"""


def test_a_growth_schedule_loads_typed_and_resolves_into_stages(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(SCHEDULE_YAML)
    cfg = load_config(path)
    assert cfg.growth.schedule == [
        GrowthStage(at_step=200, model=StageModel(hidden_size=128, num_heads=4, ffn_size=256)),
        GrowthStage(at_step=500, model=StageModel(num_layers=3)),
    ]
    (s0, m0), (s1, m1), (s2, m2) = model_stages(cfg)
    assert (s0, s1, s2) == (0, 200, 500)
    assert m0 == cfg.model and (m1.hidden_size, m1.num_heads, m1.ffn_size, m1.num_layers) == (128, 4, 256, 2)
    assert m2 == dataclasses.replace(m1, num_layers=3)  # each entry changes only the keys it lists
    published = json.loads(json.dumps(config_to_dict(cfg)))  # what the coordinator publishes, as it travels
    assert published["growth"]["schedule"][0] == {
        "at_step": 200,
        "model": {"hidden_size": 128, "num_heads": 4, "ffn_size": 256, "num_layers": None},
    }
    assert config_from_dict(published) == cfg


@pytest.mark.parametrize(
    "entries, message",
    [
        (
            [{"at_step": 10, "model": {"hidden_size": 128, "num_head": 4}}],
            r"unknown config key growth\.schedule\[0\]"
            r"\.model\.num_head",
        ),
        (
            [{"at_step": 10, "model": {"hidden_size": 128}, "when": 3}],
            r"unknown config key growth\.schedule\[0\]\.when",
        ),
        ([{"model": {"hidden_size": 128}}], r"missing config key growth\.schedule\[0\]\.at_step"),
        ([{"at_step": 0, "model": {"hidden_size": 128}}], r"schedule\[0\]\.at_step 0 must be greater than .* 0"),
        (
            [{"at_step": 20, "model": {"hidden_size": 128}}, {"at_step": 20, "model": {"num_layers": 3}}],
            r"schedule\[1\]\.at_step 20 must be greater than the previous stage's 20",
        ),
        ([{"at_step": 10, "model": {"ffn_size": 64}}], r"schedule\[0\]\.model\.ffn_size 64 is smaller than .* 128"),
        (
            [{"at_step": 10, "model": {"hidden_size": 128}}, {"at_step": 20, "model": {"num_layers": 1}}],
            r"schedule\[1\]\.model\.num_layers 1 is smaller",
        ),
        ([{"at_step": 10, "model": {"num_layers": 2}}], r"schedule\[0\]\.model changes no size"),
        ([{"at_step": 10, "model": {}}], r"schedule\[0\]\.model changes no size"),
        ([{"at_step": 10, "model": {"hidden_size": 96, "num_heads": 3}}], r"hidden_size 96 is not an integer multiple"),
        (
            [{"at_step": 10, "model": {"hidden_size": 128, "num_heads": 8}}],
            r"head size \(hidden_size / num_heads\) 16 is not an integer multiple of the previous stage's 32",
        ),
        ([{"at_step": 10, "model": {"hidden_size": 128, "num_heads": 3}}], r"hidden_size 128 is not divisible by"),
        ([{"at_step": 10, "model": {"ffn_size": 192}}], r"ffn_size 192 is not an integer multiple of .* 128"),
        ([{"at_step": "soon", "model": {"hidden_size": 128}}], r"growth\.schedule\[0\]\.at_step: expected an integer"),
        ({"at_step": 10}, r"growth\.schedule: expected a list"),
    ],
)
def test_a_bad_growth_schedule_is_one_line_error(entries, message):
    data = yaml.safe_load(SCHEDULE_YAML)
    data["growth"]["schedule"] = entries
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(json.loads(json.dumps(data)))
    assert "\n" not in str(info.value)


def test_the_generators_widths_must_grow_by_integer_factors_too():
    data = yaml.safe_load(SCHEDULE_YAML)
    data["model"]["generator_fraction"] = 1 / 3  # generator FFN 43 of 128, then 85 of 256
    data["growth"]["schedule"] = [{"at_step": 10, "model": {"ffn_size": 256}}]
    with pytest.raises(
        ConfigError, match="generator FFN size 85 is not an integer multiple of the previous stage's 43"
    ):
        config_from_dict(data)


def test_a_growth_schedule_needs_the_electra_pair():
    data = yaml.safe_load(SCHEDULE_YAML)
    data["model"]["architecture"] = "albert"
    with pytest.raises(ConfigError, match="mid-run growth supports model.architecture electra only"):
        config_from_dict(data)
