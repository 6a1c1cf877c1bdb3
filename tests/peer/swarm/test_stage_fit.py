"""``peer.swarm.stage_fit``: the next growth stage's memory, estimated from this stage's, against what is free."""

from __future__ import annotations

import pytest
import torch

from peer.config import ModelSpec, model_stages
from peer.errors import UserError
from peer.modeling import build_models
from peer.swarm.stage_fit import Memory, check_next_stage_fits, measured_memory, parameter_count
from tests.peer.swarm.test_swarm_stage_switch import VOCAB, run_config

GiB = 2**30


def stages():
    cfg = run_config()  # 32 wide, then 64 wide at the schedule's step
    return model_stages(cfg)


def test_parameter_count_on_the_meta_device_equals_the_built_models():
    spec = stages()[1][1]
    built = build_models(spec, VOCAB, seed=0)
    assert parameter_count(spec, VOCAB) == sum(p.numel() for p in built.parameters())


def test_the_footprint_scales_with_the_parameters_and_must_fit_in_the_free_memory():
    (_, first), (_, second) = stages()
    models = build_models(first, VOCAB, seed=0)
    ratio = parameter_count(second, VOCAB) / sum(p.numel() for p in models.parameters())
    assert ratio > 2  # 2x wide: ~3-4x the parameters

    def fits(free: int):
        return check_next_stage_fits(models, second, 1, torch.device("cpu"), lambda d: Memory(GiB, free))

    assert fits(10 * GiB) == int(GiB * ratio)
    with pytest.raises(UserError, match=r"^this peer cannot hold growth stage 1 \(.* GiB free\): leaving"):
        fits(int(GiB * ratio) - 1)


def test_an_unchanged_size_needs_what_this_stage_holds():
    first = stages()[0][1]
    models = build_models(first, VOCAB, seed=0)
    same = ModelSpec(**{**first.__dict__})
    assert check_next_stage_fits(models, same, 1, torch.device("cpu"), lambda d: Memory(5, 5)) == 5


def test_this_process_memory_is_measured_on_cpu():
    memory = measured_memory(torch.device("cpu"))
    assert memory.footprint > 50 * 2**20  # torch alone is more than that
    assert memory.free > 0

