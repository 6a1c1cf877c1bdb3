"""bench/warm_start.py's reading of the curves: the late target, the tokens each model needs, the ratio, the spread
over seeds. Pure functions on hand-made curves (the bench itself takes tens of minutes on a CPU)."""

from __future__ import annotations

import pytest

from bench.warm_start import PARTS, aggregate, compare, eval_steps, target_step, token_ratio, tokens_to_reach


def curve(values: list[float], every: int = 10, tokens_per_step: int = 64) -> list[dict]:
    return [
        {"step": i * every, "tokens": i * every * tokens_per_step, **{k: v for k in PARTS}}
        for i, v in enumerate(values)
    ]


def test_target_step_is_on_the_eval_grid():
    assert target_step(300, 0.85) == 255
    assert 255 in eval_steps(300, 5, 50, 25, (255,))
    assert {0, 25, 50, 300} <= eval_steps(300, 5, 50, 25) and 45 in eval_steps(300, 5, 50, 25)


def test_tokens_to_reach_interpolates_and_reports_never():
    c = curve([10.0, 8.0, 6.0])
    assert tokens_to_reach(c, 7.0).interpolated == pytest.approx(960.0)  # halfway between 640 and 1280
    assert tokens_to_reach(c, 7.0).at_eval == 1280
    assert tokens_to_reach(c, 5.0).interpolated is None


def test_compare_reads_both_models_against_randoms_late_value():
    random = curve([10.0, 9.0, 8.0, 7.0, 6.5])  # target at step 30: 7.0, which random first reaches at 1920 tokens
    grown = curve([10.0, 7.0, 6.0, 5.0, 4.0])  # reaches 7.0 at 640 tokens
    c = compare(grown, random, "loss", 30)
    assert c["target"] == {"step": 30, "tokens": 1920, "value": 7.0}
    assert c["tokens_to_target"]["random"]["interpolated"] == 1920.0
    assert c["tokens_to_target"]["grown"]["interpolated"] == 640.0
    assert c["token_ratio"] == pytest.approx(3.0)
    never = compare(curve([10.0, 9.5, 9.4, 9.3, 9.2]), random, "loss", 30)
    assert never["token_ratio"] is None and never["tokens_to_target"]["grown"]["at_eval"] is None


def test_aggregate_gives_mean_min_max_and_counts_seeds_that_never_reach():
    random = curve([10.0, 9.0, 8.0, 7.0, 6.5])
    runs = {
        str(seed): {"total_tokens": 2560, "parts": {k: compare(g, random, k, 30) for k in PARTS}}
        for seed, g in enumerate([curve([10.0, 7.0, 6.0, 5.0, 4.0]), curve([10.0, 8.5, 7.0, 6.0, 5.0])])
    }
    a = aggregate(runs)["loss"]
    assert a["ratios"] == pytest.approx([3.0, 1.5]) and a["reached"] == "2 of 2"
    assert (a["mean"], a["min"], a["max"]) == pytest.approx((2.25, 1.5, 3.0))
    assert a["random_fraction_of_run_to_target"] == pytest.approx([0.75, 0.75])
    assert token_ratio(100.0, None) is None and token_ratio(100.0, 0.0) is None
