"""The pieces of ``bench/seq2seq_warm_start.py`` that decide its figure: the task's corruption and the summary."""

from __future__ import annotations

import random

from bench.seq2seq_warm_start import Task, corrupt, sentences, summarise


def test_corruption_only_drops_and_swaps_words_and_keeps_one():
    task, rng = Task(drop=0.3, swap=0.2), random.Random(0)
    sentence = "The quick brown fox jumps over the lazy dog near the river bank today"
    changed = 0
    for _ in range(200):
        noisy = corrupt(sentence, task, rng)
        assert noisy and set(noisy.split()) <= set(sentence.split())
        changed += noisy != sentence
    assert changed > 150  # the task is not the identity
    assert corrupt("Word", Task(drop=1.0, swap=0.0), rng) == "Word"


def test_sentences_keep_whole_capitalised_ones_of_the_allowed_length():
    text = "Short one. This sentence has exactly nine words in it, fine. lower case start is dropped here too ok."
    assert list(sentences([text], Task(drop=0.2, swap=0.1))) == ["This sentence has exactly nine words in it, fine."]


def test_summary_says_lower_everywhere_only_if_every_seed_and_step_is_lower():
    def run(init, seed, losses):
        return {"init": init, "seed": seed, "curve": list(enumerate(losses))}

    runs = [run("warm", 0, [5, 3]), run("random", 0, [6, 4]), run("warm", 1, [5, 3]), run("random", 1, [6, 4])]
    summary = summarise(runs)
    assert summary["warm_lower_at_every_evaluated_step_all_seeds"] is True
    assert summary["final_heldout_loss"]["warm"]["mean"] == 3 and summary["seeds"] == [0, 1]
    runs[3] = run("random", 1, [4.5, 4])  # one seed's step 0 is lower for random init
    assert summarise(runs)["warm_lower_at_every_evaluated_step_all_seeds"] is False


def test_summary_of_one_init_has_no_comparison():
    runs = [{"init": "warm", "seed": 0, "curve": [(0, 5.0), (10, 3.0)]}]
    summary = summarise(runs)
    assert summary["warm_lower_at_every_evaluated_step_all_seeds"] is None
    assert list(summary["final_heldout_loss"]) == ["warm"]


def test_head_gain_scales_only_the_warm_starts_new_lm_head_layernorm():
    from types import SimpleNamespace

    import torch
    from transformers import ElectraConfig, ElectraForPreTraining

    from bench.seq2seq_warm_start import build_model

    config = ElectraConfig(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    torch.manual_seed(0)
    disc = ElectraForPreTraining(config)
    tokenizer = SimpleNamespace(cls_token_id=1, sep_token_id=2, pad_token_id=0)

    def gain(init, head_gain):
        model = build_model(disc, tokenizer, init, seed=0, head_gain=head_gain)
        return model.decoder.generator_predictions.LayerNorm.weight

    assert torch.equal(gain("warm", 0.25), 0.25 * gain("warm", 1.0))
    assert torch.equal(gain("random", 0.25), gain("random", 1.0))  # the baseline keeps HF's init
    assert torch.equal(build_model(disc, tokenizer, "warm", 0, 0.25).encoder.embeddings.word_embeddings.weight,
                       disc.electra.embeddings.word_embeddings.weight)  # fmt: skip
