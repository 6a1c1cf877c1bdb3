import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import MASK, VOCAB, make_batch, tiny_config

from peer.errors import UserError
from peer.modeling import build_models
from peer.objectives import binary_auc, build_objective
from peer.objectives.losses import masked_lm_loss
from peer.objectives.masking import (
    candidate_mask,
    gumbel_max_sample,
    mask_inputs,
    positions_from_mask,
    sample_ngram_spans,
    sample_token_positions,
)


def electra_setup(seed: int = 0):
    cfg = tiny_config("electra")
    models = build_models(cfg.model, VOCAB, seed=seed).eval()  # eval: no dropout, so forward passes are comparable
    return cfg, models, build_objective(cfg, models, mask_token_id=MASK)


def test_electra_loss_equals_plain_hf_full_vocab_reference():
    cfg, models, objective = electra_setup()
    batch = make_batch(4, 24)
    state = objective.rng.get_state()
    out = objective(batch)

    # The same step by hand with the plain HF modules: full-sequence vocabulary projection, then pick rows.
    rng = torch.Generator().manual_seed(0)
    rng.set_state(state)
    ids, cand = batch["input_ids"], candidate_mask(batch)
    pos = sample_token_positions(cand, 0.15, rng)
    masked = mask_inputs(ids, pos, MASK, rng, 0.85)
    kw = dict(attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"])
    full = models.generator(input_ids=masked, **kw).logits
    chosen = pos.as_bool(24)
    mlm = F.cross_entropy(full[chosen], ids[chosen])
    rows = full.gather(1, pos.index[..., None].expand(-1, -1, VOCAB))
    sampled = gumbel_max_sample(rows, rng)
    disc_in = ids.clone()
    for b in range(4):
        for k in range(pos.index.shape[1]):
            if pos.weight[b, k]:
                disc_in[b, pos.index[b, k]] = sampled[b, k]
    labels = (disc_in != ids).float()
    disc_logits = models.discriminator(input_ids=disc_in, **kw).logits
    disc = F.binary_cross_entropy_with_logits(disc_logits[cand], labels[cand])
    assert out.metrics["mlm_loss"] == pytest.approx(mlm.item(), abs=1e-5)
    assert out.metrics["disc_loss"] == pytest.approx(disc.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(mlm.item() + 50 * disc.item(), abs=1e-4)


def test_embeddings_are_one_tensor_and_the_generator_loss_reaches_it():
    _, models, objective = electra_setup()
    gen_emb, disc_emb = models.generator.electra.embeddings, models.discriminator.electra.embeddings
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm"):
        assert getattr(gen_emb, name) is getattr(disc_emb, name)
    assert models.generator.generator_lm_head.weight is disc_emb.word_embeddings.weight
    step = objective.step(objective.to_device(make_batch(4, 24)), objective.rng)
    masked_lm_loss(step.mlm_logits, step.mlm_labels, step.positions.weight).backward()
    # The generator's loss alone puts gradient into the discriminator's (shared) tables.
    assert disc_emb.word_embeddings.weight.grad.abs().sum() > 0
    assert disc_emb.position_embeddings.weight.grad.abs().sum() > 0
    assert models.discriminator.discriminator_predictions.dense.weight.grad is None
    names = [n for n, _ in models.named_parameters()]
    assert not any(n.startswith("generator.electra.embeddings.") for n in names)


def test_correct_guesses_are_labelled_original():
    _, models, objective = electra_setup()
    batch = make_batch(4, 24, pad_rows=0)
    token = 250
    batch["input_ids"] = torch.where(batch["special_tokens_mask"].bool(), batch["input_ids"], token)
    with torch.no_grad():
        models.generator.generator_lm_head.bias.zero_()
        models.generator.generator_lm_head.bias[token] = 1e4  # the generator always guesses the original
    step = objective.step(objective.to_device(batch), objective.rng)
    assert step.positions.weight.sum() > 0 and (step.sampled[step.positions.weight > 0] == token).all()
    assert not step.disc_labels.any()
    with torch.no_grad():
        models.generator.generator_lm_head.bias[token] = -1e4
        models.generator.generator_lm_head.bias[7] = 1e4  # always a wrong token: every masked position replaced
    step = objective.step(objective.to_device(batch), objective.rng)
    assert step.disc_labels.sum() == step.positions.weight.sum()


@pytest.mark.parametrize("arch", ["electra", "albert"])
def test_padding_never_counts(arch):
    # Whatever sits in the padded positions, the losses and every metric are the same: padding is never a candidate,
    # never attended to, never in a denominator (ALBERT's SOP pairs are padded; ELECTRA's packed blocks rarely are).
    cfg = tiny_config(arch)
    objective = build_objective(cfg, build_models(cfg.model, VOCAB, seed=0).eval(), mask_token_id=MASK)
    batch = make_batch(4, 24, pad_rows=2, sep_at=6 if arch == "albert" else None)
    state = objective.rng.get_state()
    ref = objective(batch)
    noisy = copy.deepcopy(batch)
    pad = batch["attention_mask"] == 0
    noisy["input_ids"][pad] = torch.randint(200, VOCAB, (int(pad.sum()),))
    objective.rng.set_state(state)
    again = objective(noisy)
    assert again.loss.item() == pytest.approx(ref.loss.item(), abs=1e-5)
    assert again.metrics == pytest.approx(ref.metrics, abs=1e-5)


def test_same_seed_same_losses_and_rng_state_restores_the_stream():
    _, _, a = electra_setup()
    _, _, b = electra_setup()
    batch = make_batch(4, 24)
    assert a(batch).loss.item() == b(batch).loss.item()
    saved = a.state_dict()
    first = a(batch).loss.item()
    a.load_state_dict(saved)
    assert a(batch).loss.item() == first
    assert b(batch).loss.item() == first


def test_electra_evaluate_reports_the_google_metrics_and_restores_mode():
    _, models, objective = electra_setup()
    models.train()
    batches = [make_batch(4, 24, seed=s) for s in range(2)]
    m1, m2 = objective.evaluate(batches), objective.evaluate(batches)
    assert m1 == m2  # a fresh eval RNG each call
    assert set(m1) >= {"mlm_loss", "mlm_accuracy", "disc_accuracy", "disc_auc", "disc_precision", "disc_recall"}
    assert 0 <= m1["disc_auc"] <= 1 and models.discriminator.training


def test_albert_losses_by_hand_and_sop_labels_used():
    cfg = tiny_config("albert")
    models = build_models(cfg.model, VOCAB, seed=0).eval()
    objective = build_objective(cfg, models, mask_token_id=MASK)
    batch = make_batch(6, 32, sep_at=14)
    state = objective.rng.get_state()
    step = objective.step(objective.to_device(batch), objective.rng)
    assert torch.equal(step.sop_labels, batch["sentence_order_label"])
    objective.rng.set_state(state)
    out = objective(batch)
    w = step.positions.weight > 0
    mlm = F.cross_entropy(step.mlm_logits[w], step.mlm_labels[w])
    sop = F.cross_entropy(step.sop_logits, batch["sentence_order_label"])
    assert out.metrics["mlm_loss"] == pytest.approx(mlm.item(), abs=1e-5)
    assert out.metrics["sop_loss"] == pytest.approx(sop.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(mlm.item() + sop.item(), abs=1e-5)
    flipped = dict(batch, sentence_order_label=1 - batch["sentence_order_label"])
    objective.rng.set_state(state)
    sop_flipped = F.cross_entropy(step.sop_logits, flipped["sentence_order_label"])
    assert objective(flipped).metrics["sop_loss"] == pytest.approx(sop_flipped.item(), abs=1e-5)
    ev = objective.evaluate([batch])
    assert set(ev) == {"loss", "mlm_loss", "mlm_accuracy", "sop_loss", "sop_accuracy"}


def test_albert_masked_rows_match_the_full_hf_head():
    cfg = tiny_config("albert")
    models = build_models(cfg.model, VOCAB, seed=1).eval()
    objective = build_objective(cfg, models, mask_token_id=MASK)
    batch = make_batch(3, 32)
    state = objective.rng.get_state()
    step = objective.step(objective.to_device(batch), objective.rng)
    rng = torch.Generator().manual_seed(0)
    rng.set_state(state)
    mask = sample_ngram_spans(batch, 0.15, 3, rng)
    pos = positions_from_mask(mask, step.positions.index.shape[1])
    assert torch.equal(pos.index, step.positions.index)
    corrupted = mask_inputs(batch["input_ids"], pos, MASK, rng, 0.8, 0.1, vocab_size=VOCAB)
    full = models.discriminator(
        input_ids=corrupted, attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
    )
    w = pos.weight > 0
    assert torch.allclose(step.mlm_logits[w], full.prediction_logits[mask], atol=1e-5)
    assert torch.allclose(step.sop_logits, full.sop_logits, atol=1e-6)


def test_objective_must_fit_the_architecture():
    cfg = tiny_config("electra")
    models = build_models(cfg.model, VOCAB, seed=0)
    cfg.objective.name = "albert"
    with pytest.raises(UserError, match="does not fit"):
        build_objective(cfg, models)


def test_auc_equals_the_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 10, (300,), generator=g).float()  # many ties
    labels = (torch.rand(300, generator=g) < scores / 12).long()
    pos, neg = scores[labels == 1], scores[labels == 0]
    # P(positive > negative) + 1/2 P(tie), over every (positive, negative) pair.
    pairwise = ((pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()).mean()
    assert binary_auc(scores, labels) == pytest.approx(pairwise.item(), abs=1e-12)
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([0, 1])) == 1.0
    assert binary_auc(torch.tensor([0.1, 0.9]), torch.tensor([1, 0])) == 0.0
