import math

import pytest
import torch

from peer.objectives.losses import electra_loss, masked_lm_loss, replaced_token_loss, sentence_order_loss
from peer.objectives.metrics import MaskedLMTally, masked_accuracy


def test_masked_lm_loss_by_hand_ignores_filler_rows():
    logits = torch.tensor([[[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]])  # [B=1, K=3, V=2]
    labels = torch.tensor([[0, 1, 1]])
    # softmax([0, 0])[0] = 1/2, softmax([0, ln 3])[1] = 3/4; the third row is a static-shape filler.
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    got = masked_lm_loss(logits, labels, torch.tensor([[1.0, 1.0, 0.0]]))
    assert abs(got.item() - expected) < 1e-6


def test_replaced_token_loss_by_hand_ignores_padding():
    logits = torch.tensor([[0.0, math.log(3.0), 100.0], [-math.log(3.0), 7.0, -7.0]])
    labels = torch.tensor([[1, 1, 0], [0, 0, 1]])
    weight = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # sigmoid(0) = 1/2 for a 1; sigmoid(ln 3) = 3/4 for a 1; sigmoid(-ln 3) = 1/4, so p(0) = 3/4.
    expected = (math.log(2.0) + math.log(4.0 / 3.0) + math.log(4.0 / 3.0)) / 3
    assert abs(replaced_token_loss(logits, labels, weight).item() - expected) < 1e-6


def test_electra_total_is_mlm_plus_lambda_disc_and_sop_by_hand():
    assert electra_loss(torch.tensor(2.0), torch.tensor(0.5), 50.0).item() == 27.0
    sop = sentence_order_loss(torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]]), torch.tensor([1, 1]))
    assert abs(sop.item() - (math.log(4.0 / 3.0) + math.log(4.0)) / 2) < 1e-6


def test_electra_loss_at_init_is_about_ln_vocab_plus_50_ln2():
    # Uniform generator and an undecided discriminator: ln V + 50 ln 2 (~ 45 for V = 30522).
    v = 30522
    mlm = masked_lm_loss(torch.zeros(1, 4, v), torch.tensor([[5, 6, 7, 8]]), torch.ones(1, 4))
    disc = replaced_token_loss(torch.zeros(2, 8), torch.randint(2, (2, 8)), torch.ones(2, 8))
    total = electra_loss(mlm, disc, 50.0).item()
    assert abs(total - (math.log(v) + 50 * math.log(2))) < 1e-4 and 44.9 < total < 45.1


def test_masked_accuracy_and_the_held_out_tally_weight_rows_by_hand():
    # Batch 1: rows predicted [right, wrong, (filler, right)]; batch 2: one right row of three.
    logits1 = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
    labels1 = torch.tensor([[0, 1, 1]])
    weight1 = torch.tensor([[1.0, 1.0, 0.0]])
    assert masked_accuracy(logits1, labels1, weight1).item() == 0.5  # the filler row's hit does not count
    assert masked_accuracy(logits1, labels1, torch.zeros(1, 3)).item() == 0.0
    logits2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    labels2 = torch.tensor([[1, 0, 1]])
    tally = MaskedLMTally()
    tally.add(logits1, labels1, weight1)
    tally.add(logits2, labels2, torch.ones(1, 3))
    # Means over the 5 real rows, not over the 2 batches: 2 hits of 5; the loss is the mean row cross-entropy.
    assert tally.rows == 5 and tally.accuracy == pytest.approx(2 / 5)
    ce = lambda a, b: math.log(1 + math.exp(b - a))  # noqa: E731  -log softmax(a) over the pair (a, b)
    rows = [ce(2, 0), ce(0, 2), ce(1, 0), ce(0, 1), ce(0, 1)]
    assert tally.loss == pytest.approx(sum(rows) / 5, abs=1e-6)
