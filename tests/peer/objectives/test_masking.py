import torch
from conftest import MASK, make_batch

from peer.objectives.masking import (
    candidate_mask,
    gumbel_max_sample,
    mask_inputs,
    max_predictions,
    ngram_length_probs,
    positions_from_mask,
    sample_ngram_spans,
    sample_token_positions,
)


def test_token_positions_fixed_count_uniform_and_never_special_or_pad():
    batch = make_batch(8, 64, pad_rows=3)
    cand = candidate_mask(batch)
    rng = torch.Generator().manual_seed(0)
    hits = torch.zeros(8, 64)
    draws = 400
    for _ in range(draws):
        pos = sample_token_positions(cand, 0.15, rng)
        assert pos.index.shape == (8, max_predictions(64, 0.15))  # static shape
        chosen = pos.as_bool(64)
        assert not (chosen & ~cand).any()
        assert torch.equal(chosen.sum(1), torch.round(cand.sum(1) * 0.15).long())
        hits += chosen.float()
    rate = hits[cand] / draws
    # Every candidate is picked at ~15 % (binomial sd at 400 draws ~ 1.8 %), none elsewhere.
    assert abs(rate.mean().item() - 0.15) < 0.01 and rate.min() > 0.07 and rate.max() < 0.24
    assert hits[~cand].sum() == 0


def test_dynamic_positions_match_the_static_ones():
    cand = candidate_mask(make_batch(4, 40))
    static = sample_token_positions(cand, 0.15, torch.Generator().manual_seed(3), static=True)
    dynamic = sample_token_positions(cand, 0.15, torch.Generator().manual_seed(3), static=False)
    assert torch.equal(static.as_bool(40), dynamic.as_bool(40))


def test_positions_from_mask_round_trip_with_filler_rows():
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, [0, 3, 9]] = True
    mask[1, 5] = True
    pos = positions_from_mask(mask, k=4)
    assert pos.index[0, :3].tolist() == [0, 3, 9] and pos.weight.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert torch.equal(pos.as_bool(10), mask)


def test_electra_corruption_is_85_percent_mask_15_percent_original():
    batch = make_batch(16, 64, pad_rows=0)
    ids = batch["input_ids"]
    rng = torch.Generator().manual_seed(1)
    n_mask = n_total = 0
    for _ in range(100):
        pos = sample_token_positions(candidate_mask(batch), 0.15, rng)
        out = mask_inputs(ids, pos, MASK, rng, 0.85)
        chosen = pos.as_bool(64)
        assert torch.equal(out[~chosen], ids[~chosen])
        n_mask += int((out[chosen] == MASK).sum())
        n_total += int(chosen.sum())
    assert abs(n_mask / n_total - 0.85) < 0.01


def test_bert_corruption_80_10_10():
    batch = make_batch(16, 64, pad_rows=0)
    ids = batch["input_ids"]
    rng = torch.Generator().manual_seed(2)
    counts = torch.zeros(3)
    for _ in range(100):
        pos = sample_token_positions(candidate_mask(batch), 0.15, rng)
        out = mask_inputs(ids, pos, MASK, rng, 0.8, 0.1, vocab_size=1000)
        chosen = pos.as_bool(64)
        is_mask = out[chosen] == MASK
        same = out[chosen] == ids[chosen]
        counts += torch.tensor([is_mask.sum(), same.sum(), (~is_mask & ~same).sum()], dtype=torch.float)
    frac = counts / counts.sum()
    # "Unchanged" also holds random draws that hit the original token (p = 1/1000).
    assert abs(frac[0] - 0.8) < 0.01 and abs(frac[1] - 0.1) < 0.01 and abs(frac[2] - 0.1) < 0.01


def test_ngram_masking_rate_whole_words_and_segments():
    batch = make_batch(32, 128, pad_rows=4, sep_at=60)
    cand = candidate_mask(batch)
    continues = cand[:, 1:] & cand[:, :-1] & ~batch["word_start"][:, 1:].bool()
    assert continues.sum() > 100
    rng = torch.Generator().manual_seed(4)
    masked = total = 0
    for _ in range(50):
        m = sample_ngram_spans(batch, 0.15, 3, rng)
        assert not (m & ~cand).any()
        budget = torch.round(cand.sum(1) * 0.15).long()
        assert (m.sum(1) <= budget).all()
        # Whole words: a token that continues a word is masked exactly when the token before it is.
        assert torch.equal(m[:, 1:][continues], m[:, :-1][continues])
        masked += int(m.sum())
        total += int(cand.sum())
    assert 0.14 < masked / total <= 0.15


def test_ngram_lengths_follow_one_over_n():
    p = ngram_length_probs(3)
    assert torch.allclose(p, torch.tensor([6 / 11, 3 / 11, 2 / 11]))
    # Long masked runs of whole words appear far more often with n-grams than with single words.
    batch = make_batch(32, 128, pad_rows=0)
    batch["word_start"] = torch.ones_like(batch["word_start"])  # one token per word: runs count words

    def long_run_fraction(max_ngram: int) -> float:
        rng = torch.Generator().manual_seed(5)
        pairs = total = 0
        for _ in range(30):
            m = sample_ngram_spans(batch, 0.15, max_ngram, rng)
            pairs += int((m[:, 1:] & m[:, :-1]).sum())
            total += int(m.sum())
        return pairs / total

    unigram, trigram = long_run_fraction(1), long_run_fraction(3)
    # p(next word also masked | masked): ~0.15 for independent words; E[n-1]/E[n] = 5/18 ≈ 0.28 more for n ≤ 3.
    assert unigram < 0.2 and trigram > unigram + 0.15


def test_gumbel_max_samples_follow_softmax_in_fp32():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(20000, 3).to(torch.bfloat16)
    s = gumbel_max_sample(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(s, minlength=3).float() / s.numel()
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2]), atol=0.015)
