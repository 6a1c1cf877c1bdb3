"""Which growth stage a swarm is in and the DHT prefix of each stage (``peer.swarm.stage_keys``)."""

from __future__ import annotations

import pytest

from peer.config import config_from_dict, model_stages
from peer.swarm.stage_keys import stage_at, stage_prefix, swarm_step

SCHEDULED = {
    "run_id": "grows",
    "model": {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "ffn_size": 64},
    "growth": {
        "schedule": [
            {"at_step": 3, "model": {"hidden_size": 64, "num_heads": 4, "ffn_size": 128}},
            {"at_step": 10, "model": {"num_layers": 4}},
        ]
    },
}


def test_the_first_stage_keeps_the_run_id_and_later_stages_get_their_own_prefix():
    """Stage 0's prefix is the run_id itself, so a run without a schedule keeps the hivemind keys it had."""
    assert stage_prefix("run", 0) == "run"
    assert stage_prefix("run", 1) == "run-stage1" and stage_prefix("run", 2) == "run-stage2"
    with pytest.raises(ValueError):
        stage_prefix("run", -1)


def test_the_stage_follows_from_the_global_step():
    stages = model_stages(config_from_dict(SCHEDULED))
    assert [stage_at(stages, step) for step in (0, 2, 3, 9, 10, 500)] == [0, 0, 1, 1, 2, 2]
    unscheduled = model_stages(config_from_dict({"run_id": "flat"}))
    assert stage_at(unscheduled, 10**6) == 0


def test_the_swarm_step_a_joiner_reads_is_the_highest_record():
    assert swarm_step([2, 5, 4]) == 5
    assert swarm_step([]) == 0
