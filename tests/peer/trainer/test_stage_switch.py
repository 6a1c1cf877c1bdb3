"""The growth switch in the single-process trainer (``peer.trainer.stages``): at a schedule's step the pair and its
AdamW state grow in place and training goes on; exact width growth keeps the held-out loss."""

import dataclasses
import itertools
import math

import pytest
import torch

from peer.config import GrowthStage, ModelSpec, RunConfig, StageModel
from peer.errors import UserError
from peer.growth.midrun import grow_stage
from peer.modeling import build_models
from peer.objectives import build_objective
from peer.trainer import checkpoint_dirs, train
from peer.trainer.checkpoint import TRAINER_STATE_FILE
from peer.trainer.schedule import lr_factor
from tests.peer.trainer.test_loop import VOCAB, batches, params, with_models


def setup(out_dir, width_at: int = 3, depth_at: int = 5, optimizer: str = "adamw"):
    cfg = RunConfig()
    cfg.model = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=32)
    cfg.growth.schedule = [
        GrowthStage(width_at, StageModel(hidden_size=64, num_heads=4, ffn_size=128)),
        GrowthStage(depth_at, StageModel(num_layers=3)),
    ]
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.optimizer = 4, 1, optimizer
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.total_steps = 1e-3, 2, 7
    cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.out_dir = 100, 100, str(out_dir)
    return with_models(cfg)


def heldout():
    return list(itertools.islice(batches(99), 3))


def grow(models, states, old, new):
    return grow_stage(models, states, old, new, "stack")


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_the_trainer_grows_at_each_stage_keeps_the_loss_through_width_and_trains_on(tmp_path, optimizer):
    cfg, models, objective = setup(tmp_path / "run", optimizer=optimizer)
    lrs = []
    result = train(cfg, models, objective, batches(7), heldout(), on_step=lambda r: lrs.append(r.lr), grow_stage=grow)
    width, depth = result.switches
    assert (width.step, width.before, width.after) == (3, "32x2x64x2", "64x4x128x2")
    assert (depth.step, depth.before, depth.after) == (5, "64x4x128x2", "64x4x128x3")
    assert abs(width.heldout_after["loss"] / width.heldout_before["loss"] - 1) < 1e-3
    assert abs(width.heldout_after["mlm_loss"] / width.heldout_before["mlm_loss"] - 1) < 1e-3
    assert width.parameters[1] > width.parameters[0] and depth.parameters[1] > depth.parameters[0]
    assert math.isfinite(depth.heldout_after["loss"])  # stacking is not exact: reported, not bounded
    c = models.discriminator.config
    assert (c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers) == (64, 4, 128, 3)
    assert models.generator.electra.embeddings is models.discriminator.electra.embeddings  # still tied
    assert (
        result.state.step == 7
        and math.isfinite(result.last_metrics["loss"])
        and math.isfinite(result.eval_metrics["loss"])
    )
    # The schedule goes on through the switches: the lr of every step is the one lr_factor gives its step.
    assert lrs == [1e-3 * lr_factor(s, 2, 7) for s in range(7)]
    # ...and so does Adam: every parameter's state counts all 7 steps (a fresh optimizer at a switch would say 4 or
    # 2), the stacked block's included (it started from its twin's count).
    (last,) = checkpoint_dirs(cfg.train.out_dir)
    saved = torch.load(last / TRAINER_STATE_FILE, weights_only=True)["optimizer"]["state"]
    assert len(saved) == len(models.parameters()) and {float(s["step"]) for s in saved.values()} == {7.0}


def test_a_run_resumed_at_a_stages_step_grows_at_once_and_matches_a_straight_run(tmp_path):
    cfg, models, objective = setup(tmp_path / "straight", depth_at=6)
    train(cfg, models, objective, batches(7), grow_stage=grow)
    straight = params(models)

    cfg, models, objective = setup(tmp_path / "resumed", depth_at=6)
    cfg.train.checkpoint_every = 3
    train(cfg, models, objective, batches(7), max_steps=3, grow_stage=grow)  # stops at the width stage's step
    assert [p.name for p in checkpoint_dirs(cfg.train.out_dir)] == ["ckpt-000003"]
    torch.manual_seed(999)
    cfg, models, objective = setup(tmp_path / "resumed", depth_at=6)  # the small model, as the checkpoint holds
    result = train(cfg, models, objective, batches(7), grow_stage=grow)
    assert [s.step for s in result.switches] == [3, 6] and result.resumed_from.endswith("ckpt-000003")
    resumed = params(models)
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)


def test_a_model_of_a_later_stage_than_its_step_is_refused(tmp_path):
    cfg, _, _ = setup(tmp_path / "run")
    models = build_models(dataclasses.replace(cfg.model, hidden_size=64, num_heads=4, ffn_size=128), VOCAB, seed=0)
    objective = build_objective(cfg, models)
    with pytest.raises(UserError, match="the model is stage 1's, which starts at step 3, not at 0"):
        train(cfg, models, objective, batches(7), grow_stage=grow)
