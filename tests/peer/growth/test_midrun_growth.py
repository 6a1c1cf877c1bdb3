"""Mid-run growth of a trained ELECTRA pair and of its AdamW state (``peer.growth.midrun``,
``peer.growth.optimizer_state``), on tiny real models, the real objective and the project's optimizer, in fp64."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from peer.config import ModelSpec, ObjectiveSpec, TrainSpec
from peer.growth.midrun import (
    build_grown_models,
    grow_pair_width,
    grow_stage,
    pair_state,
    stack_layers,
    stage_layer_map,
)
from peer.growth.optimizer_state import effective_lr_factors
from peer.modeling import build_models
from peer.objectives.electra import ElectraObjective
from peer.trainer.optim import load_named_optimizer_state, make_optimizer, named_optimizer_state

VOCAB, CLS, SEP, MASK = 300, 101, 102, 103
SMALL = ModelSpec(hidden_size=32, num_heads=2, ffn_size=64, num_layers=2, max_position_embeddings=32,
                  generator_fraction=0.5)  # fmt: skip
WIDE = dataclasses.replace(SMALL, hidden_size=64, num_heads=4, ffn_size=128)  # every width 2x, generator's too
DEEP = dataclasses.replace(WIDE, num_layers=3)
TRAIN = TrainSpec(lr=3e-3, weight_decay=0.01, adam_eps=1e-6)


def make_batch(seed: int, bsz: int = 4, seq_len: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(200, VOCAB, (bsz, seq_len), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    special = ((ids == CLS) | (ids == SEP)).long()
    ones = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": ones, "token_type_ids": 0 * ones, "special_tokens_mask": special}


def loss_of(models, batch, seed: int = 7) -> torch.Tensor:
    """The ELECTRA loss with the corruption drawn from a fresh generator: the same draws for any two models whose
    generators compute the same logits."""
    objective = ElectraObjective(models, ObjectiveSpec(), seed=0, mask_token_id=MASK)
    return objective.forward(batch, torch.Generator().manual_seed(seed)).loss


def adam_step(models, optimizer, batch) -> None:
    optimizer.zero_grad()
    loss_of(models, batch).backward()
    optimizer.step()


@pytest.fixture(scope="module")
def trained():
    """The small pair after 3 AdamW steps (dropout off: copies must see the same function) and its optimizer."""
    models = build_models(SMALL, VOCAB, seed=0).to(torch.float64).eval()
    optimizer = make_optimizer(models.parameters(), TRAIN)
    for step in range(3):
        adam_step(models, optimizer, make_batch(step))
    return models, optimizer


def grown_pair(trained, new: ModelSpec, moments: str = "grown"):
    """The pair of ``new`` sizes grown from ``trained``, and its optimizer holding the ``moments``: "grown" (the
    mapping under test, ``grow_stage``), "fresh" (a new optimizer) or "like_weights" (moments grown like the
    parameters)."""
    models, optimizer = trained
    states = named_optimizer_state(optimizer, models.named_parameters())
    grown, grown_states = grow_stage(models, states, SMALL, new, "stack")
    new_optimizer = make_optimizer(grown.parameters(), TRAIN)
    if moments == "like_weights":
        width = partial(grow_pair_width, old=SMALL, new=new)
        depth = partial(stack_layers, layer_map=stage_layer_map(SMALL, new, "stack"))
        like = {k: depth(width({n: s[k].double() for n, s in states.items()})) for k in ("exp_avg", "exp_avg_sq")}
        grown_states = {n: {"step": states[n]["step"], **{k: like[k][n] for k in like}} for n in like["exp_avg"]}
    if moments != "fresh":
        load_named_optimizer_state(new_optimizer, grown.named_parameters(), grown_states)
    return grown, new_optimizer


def small_reference_step(trained, batch, new: ModelSpec) -> dict[str, torch.Tensor]:
    """The small pair after one more AdamW step on ``batch`` whose lr on each tensor is ``lr / α`` (α: the growth's
    scale of that tensor), eps ``n α eps`` (n: copies per element) and weight decay ``wd α`` (so the decoupled decay
    ``lr wd`` is unchanged): what the grown pair's step is claimed to equal, contracted to the small widths."""
    models, optimizer = trained
    models = build_grown_models(models, pair_state(models), SMALL)  # a copy
    params = dict(models.named_parameters())
    width = partial(grow_pair_width, old=SMALL, new=new)
    factors = effective_lr_factors(width, pair_state(models))
    grown_sizes = {n: v.numel() for n, v in width(pair_state(models)).items()}
    decays = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    old_params = dict(trained[0].named_parameters())
    groups = []
    for name, p in params.items():
        alpha = 1 / factors[name]
        copies = grown_sizes[name] / p.numel()
        wd = decays[id(old_params[name])]
        groups.append({"params": [p], "lr": TRAIN.lr / alpha, "eps": TRAIN.adam_eps * copies * alpha,
                       "weight_decay": wd * alpha})  # fmt: skip
    reference = torch.optim.AdamW(groups, betas=(0.9, 0.999))
    states = named_optimizer_state(optimizer, trained[0].named_parameters())
    load_named_optimizer_state(reference, params.items(), states)
    adam_step(models, reference, batch)
    return pair_state(models)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def worst_gap(after: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    """Largest relative difference over the parameters, attention key biases left out: their gradient is zero in
    exact arithmetic (softmax ignores a score shift shared by all keys), so Adam moves them by ±lr on rounding
    noise, differently in any two runs, without changing the function."""
    return max(rel(after[n], expected[n]) for n in expected if not n.endswith("attention.self.key.bias"))


def test_exact_width_growth_keeps_both_losses_of_a_trained_pair(trained):
    small, _ = trained
    grown, _ = grown_pair(trained, WIDE)
    assert sum(p.numel() for p in grown.parameters()) > 2.5 * sum(p.numel() for p in small.parameters())
    for seed in (10, 11):
        batch = make_batch(seed)
        before, after = (
            ElectraObjective(m, ObjectiveSpec(), 0, MASK).forward(batch, torch.Generator().manual_seed(3)).metrics
            for m in (small, grown)
        )
        for part in ("mlm_loss", "disc_loss", "loss"):
            assert abs(float(after[part] / before[part]) - 1) < 1e-10, part


def test_grown_adam_state_makes_the_grown_step_a_small_step_with_lr_over_alpha(trained):
    """After growth the grown pair takes one AdamW step with the grown state, the run's lr and the same batch; its
    parameters then equal, to fp64 rounding, the small pair stepped with ``lr / α`` per tensor and grown again: the
    copies stayed identical (the duplicated structure holds) and every coordinate took the small model's Adam
    direction. The losses before and after match the small pair's."""
    small, _ = trained
    grown, optimizer = grown_pair(trained, WIDE)
    batch = make_batch(20)
    with torch.no_grad():
        assert abs(float(loss_of(grown, batch) / loss_of(small, batch)) - 1) < 1e-10
    adam_step(grown, optimizer, batch)
    reference = small_reference_step(trained, batch, WIDE)
    worst = worst_gap(pair_state(grown), grow_pair_width(reference, SMALL, WIDE))
    assert worst < 1e-12, worst
    with torch.no_grad():
        after = loss_of(build_grown_models(small, reference, SMALL), batch)
        assert abs(float(loss_of(grown, batch) / after) - 1) < 1e-12
    factors = effective_lr_factors(partial(grow_pair_width, old=SMALL, new=WIDE), pair_state(small))
    assert factors["discriminator.electra.encoder.layer.0.intermediate.dense.weight"] == pytest.approx(2.0)
    assert factors["discriminator.electra.embeddings.word_embeddings.weight"] == pytest.approx(1.0)


@pytest.mark.parametrize("moments", ["fresh", "like_weights"])
def test_without_the_mapping_the_first_step_is_another_one(trained, moments):
    """The same check fails by orders of magnitude with a fresh optimizer (its first step is lr·sign(g) everywhere)
    or with moments grown like the weights: the mapping is what makes the step continue the small model's."""
    small, _ = trained
    grown, optimizer = grown_pair(trained, WIDE, moments)
    batch = make_batch(20)
    adam_step(grown, optimizer, batch)
    expected = grow_pair_width(small_reference_step(trained, batch, WIDE), SMALL, WIDE)
    assert worst_gap(pair_state(grown), expected) > 1e-3


def test_stacked_blocks_start_with_the_moments_of_the_block_they_copy(trained):
    models, optimizer = trained
    grown, new_optimizer = grown_pair(trained, DEEP)
    states = named_optimizer_state(new_optimizer, grown.named_parameters())
    assert stage_layer_map(SMALL, DEEP, "stack") == [0, 1, 1]
    for model in ("discriminator", "generator"):
        for name in [n for n in states if n.startswith(f"{model}.electra.encoder.layer.2.")]:
            twin = name.replace("layer.2.", "layer.1.")
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(states[name][key], states[twin][key]), (name, key)
            assert states[name]["exp_avg"].data_ptr() != states[twin]["exp_avg"].data_ptr()
    old_steps = {float(s["step"]) for s in named_optimizer_state(optimizer, models.named_parameters()).values()}
    assert old_steps == {3.0} and {float(s["step"]) for s in states.values()} == {3.0}  # bias correction goes on
    batch = make_batch(21)
    adam_step(grown, new_optimizer, batch)
    assert torch.isfinite(loss_of(grown, batch))
