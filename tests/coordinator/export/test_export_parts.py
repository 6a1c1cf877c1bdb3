"""The pure parts of the exports: head choice, head removal, head importance, the student and its loss, int8 rows."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import ElectraConfig, ElectraForPreTraining

from coordinator.export.distill import distillation_loss, student_from_teacher, student_layer_indices
from coordinator.export.hf_code.modeling_int8 import Int8Embedding, Int8Linear, quantize_rows
from coordinator.export.hf_code.modeling_pruned import attention_blocks, prune_heads
from coordinator.export.pruning import choose_heads, head_importance


def tiny_electra(layers: int = 4) -> ElectraForPreTraining:
    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=layers,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=32)  # fmt: skip
    return ElectraForPreTraining(config).eval()


def ids() -> torch.Tensor:
    return torch.randint(5, 100, (2, 12), generator=torch.Generator().manual_seed(1))


def test_choose_heads_takes_the_least_important_and_never_a_blocks_last():
    importance = torch.tensor([[0.1, 0.9], [0.2, 0.05]])
    assert choose_heads(importance, [2, 2], 0.5) == {0: [0], 1: [1]}
    assert choose_heads(importance, [2, 2], 0.75) == {0: [0], 1: [1]}  # a third would empty a block
    assert choose_heads(torch.rand(3, 4), [4, 4, 4], 0.25).keys() <= {0, 1, 2}
    assert sum(map(len, choose_heads(torch.rand(3, 4), [4, 4, 4], 0.25).values())) == 3


def test_removing_a_head_equals_gating_it_to_zero():
    model = tiny_electra()
    x = ids()
    attn, owner, name = attention_blocks(model)[1]

    def zero_head_2(_module, args):
        heads = args[0].unflatten(-1, (4, 8)).clone()
        heads[..., 2, :] = 0
        return (heads.flatten(-2),)

    hook = getattr(owner, name).register_forward_pre_hook(zero_head_2)
    with torch.no_grad():
        gated = model(input_ids=x).logits
    hook.remove()
    pruned = copy.deepcopy(model)
    prune_heads(pruned, {1: [2]})
    with torch.no_grad():
        assert torch.allclose(pruned(input_ids=x).logits, gated, atol=1e-5)
    assert (
        attention_blocks(pruned)[1][0].query.out_features == 24
        and attention_blocks(pruned)[0][0].num_attention_heads == 4
    )
    with pytest.raises(ValueError, match="all its heads"):
        prune_heads(pruned, {0: [0, 1, 2, 3]})


def test_head_importance_is_per_block_normalised_and_leaves_the_model_as_it_was():
    model = tiny_electra()
    x = ids()
    with torch.no_grad():
        before = model(input_ids=x).logits
    for p in model.parameters():
        p.requires_grad_(False)
    scores = head_importance(model, lambda b: model(input_ids=b).logits.pow(2).mean(), [x, x])
    assert scores.shape == (4, 4) and torch.allclose(scores.norm(dim=1), torch.ones(4))
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, before)  # the gates' hooks are gone


def test_the_student_takes_every_other_layer_and_its_loss_is_zero_on_the_teacher():
    teacher = tiny_electra(layers=5)
    student = student_from_teacher(teacher)
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    for s, t in ((0, 0), (1, 2), (2, 4)):
        assert torch.equal(student.electra.encoder.layer[s].output.dense.weight,
                           teacher.electra.encoder.layer[t].output.dense.weight)  # fmt: skip
    logits, hidden = torch.randn(2, 12), torch.randn(2, 12, 32)
    weight = torch.ones(2, 12)
    loss, parts = distillation_loss(logits, logits, hidden, hidden, weight, temperature=2.0)
    assert abs(float(loss)) < 1e-5
    other, _ = distillation_loss(logits + 1, logits, hidden.flip(-1), hidden, weight, temperature=2.0)
    assert float(other) > 0.1


def test_a_student_of_a_chosen_depth_takes_the_teachers_layers_evenly_from_the_bottom():
    assert student_layer_indices(6) == [0, 2, 4] and student_layer_indices(6, 3) == [0, 2, 4]
    assert student_layer_indices(6, 2) == [0, 3] and student_layer_indices(12, 4) == [0, 3, 6, 9]
    teacher = tiny_electra(layers=6)
    student = student_from_teacher(teacher, 2)
    assert student.config.num_hidden_layers == 2
    assert torch.equal(student.electra.encoder.layer[1].output.dense.weight,
                       teacher.electra.encoder.layer[3].output.dense.weight)  # fmt: skip
    with pytest.raises(ValueError):
        student_layer_indices(6, 7)


def test_int8_rows_round_trip_within_half_a_step_and_modules_agree_with_float():
    w = torch.randn(64, 48)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert torch.all((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-7)
    linear = torch.nn.Linear(48, 64)
    x = torch.randn(3, 48)
    with torch.no_grad():
        want = linear(x)
        for grad in (False, True):  # no grad: fbgemm's dynamic int8 on a CPU; with grad: the dequantized weight
            with torch.set_grad_enabled(grad):
                got = Int8Linear.from_linear(linear)(x)
            assert (got - want).abs().max() < 0.05
    emb = torch.nn.Embedding(10, 8)
    tokens = torch.tensor([[1, 9, 3]])
    assert (Int8Embedding.from_embedding(emb)(tokens) - emb(tokens)).abs().max() < 0.02
