"""The averaging modes behind one protocol (``peer.swarm.modes``): looked up by name, and the parts
every peer of a run must agree on (the fingerprint, the state's extra tensors) unchanged by the move to objects."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from peer.config import RunConfig, SwarmSpec, load_config
from peer.errors import UserError
from peer.swarm.averaging import build_swarm_optimizer
from peer.swarm.metrics import swarm_fingerprint
from peer.swarm.modes import MODES, DiLoCoMode, SyncMode, averaging_mode

DEMO = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"


def test_every_name_a_config_accepts_has_a_mode_and_back():
    names = typing.get_args(typing.get_type_hints(SwarmSpec)["averaging"])
    assert set(names) == set(MODES)
    assert isinstance(averaging_mode(SwarmSpec(averaging="sync")), SyncMode)
    assert isinstance(averaging_mode(SwarmSpec(averaging="diloco")), DiLoCoMode)


def test_an_unknown_mode_is_one_line_naming_the_known_ones():
    with pytest.raises(UserError) as info:
        averaging_mode(SwarmSpec(averaging="gossip"))
    message = str(info.value)
    assert message == "swarm.averaging: 'gossip' is not an averaging mode (known: 'sync', 'diloco')"
    with pytest.raises(UserError, match="is not an averaging mode"):  # before anything touches the DHT
        build_swarm_optimizer(None, "run", SwarmSpec(averaging="gossip"), [], lambda p: None, None, 4)


def test_the_state_carries_one_outer_momentum_per_parameter_in_diloco_only():
    assert MODES["sync"].extras_per_parameter == 0 and MODES["diloco"].extras_per_parameter == 1


def test_fingerprints_are_those_of_peers_from_before_the_modes_were_objects():
    """Values computed at ef7c3b9 (the mode tested by name): a change here splits running swarms."""
    assert swarm_fingerprint(RunConfig()) == "a7b0207704e65b01"
    assert swarm_fingerprint(RunConfig(swarm=SwarmSpec(averaging="diloco"))) == "28fea7497cf8cf79"
    assert swarm_fingerprint(load_config(DEMO)) == "f9456c7f3b679e38"


@pytest.mark.parametrize(
    "spec",
    [
        SwarmSpec(averaging="sync", compression="blockwise4bit"),
        SwarmSpec(averaging="diloco", compression="blockwise4bit", overlap_rounds=False),
    ],
    ids=["sync", "blocking_diloco"],
)
def test_4bit_pseudo_gradients_are_refused_where_the_values_averaged_are_not_pseudo_gradients(spec):
    with pytest.raises(UserError, match="blockwise4bit is for DiLoCo pseudo-gradients"):  # before the DHT
        build_swarm_optimizer(None, "run", spec, [], lambda p: None, None, 4)
