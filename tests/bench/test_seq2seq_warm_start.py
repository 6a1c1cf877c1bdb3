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
    assert list(sentences([text], Task(drop=0.2, swap=0.1))) == [
        "This sentence has exactly nine words in it, fine."
    ]


def test_summary_says_lower_everywhere_only_if_every_seed_and_step_is_lower():
    def run(init, seed, losses):
        return {"init": init, "seed": seed, "curve": list(enumerate(losses))}

    runs = [run("warm", 0, [5, 3]), run("random", 0, [6, 4]), run("warm", 1, [5, 3]), run("random", 1, [6, 4])]
    summary = summarise(runs)
    assert summary["warm_lower_at_every_evaluated_step_all_seeds"] is True
    assert summary["final_heldout_loss"]["warm"]["mean"] == 3 and summary["seeds"] == [0, 1]
    runs[3] = run("random", 1, [4.5, 4])  # one seed's step 0 is lower for random init
    assert summarise(runs)["warm_lower_at_every_evaluated_step_all_seeds"] is False
