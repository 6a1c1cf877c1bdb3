"""bench/midrun_growth.py end to end at toy scale (a 32-wide, 2-layer BERT saved as the growth source, a few steps),
and the reading of its curves: the FLOPs plan that equalises the budgets, the crossing of grown0's final loss."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from bench.midrun_growth import SETUPS, compare, flops_to_reach, flops_to_stay, loss_at, main, plan
from peer.growth import DEFAULT_SOURCE, resolve_source


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A BERT source the bench can grow in seconds: MiniLM's tokenizer, 32 wide, 4 heads of 8, 2 layers."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_SOURCE))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=4, intermediate_size=64,
                        num_hidden_layers=2, max_position_embeddings=64)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_source")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_bench_runs_and_merges_runs_of_one_seed_each(tiny_source, tmp_path):
    flags = ["--source", str(tiny_source), "--large-steps", "4", "--switch-at", "4", "--batch-size", "2",
             "--seq-len", "16", "--eval-every", "2", "--eval-batches", "1"]  # fmt: skip
    both = main([*flags, "--seeds", "0", "1", "--out", str(tmp_path / "both.png")])
    assert (tmp_path / "both.png").is_file() and both["seeds_done"] == ["0", "1"]
    assert both["models"]["large"]["hidden_size"] == 64 and both["models"]["large"]["num_heads"] == 8
    for run in both["per_seed"].values():
        assert set(run["runs"]) == set(SETUPS)
        ends = [r["total_flops"] for r in run["runs"].values()]
        assert max(ends) - min(ends) <= both["flops_per_step"]["large"] / 2  # equal budgets, to the nearest step
        switch = run["runs"]["midrun"]["switch"]
        assert switch["step"] == 4 and switch["after"]["loss"] == pytest.approx(switch["before"]["loss"], rel=1e-3)
    assert len(both["aggregate"]["final_loss"]["midrun"]["values"]) == 2

    parts = []  # as if each seed had run in its own process
    for seed in ("0", "1"):
        parts.append(tmp_path / f"seed{seed}.json")
        parts[-1].write_text(json.dumps({**both, "per_seed": {seed: both["per_seed"][seed]}}))
    merged = main(["--merge", *map(str, parts), "--out", str(tmp_path / "merged.png")])
    assert merged["aggregate"] == both["aggregate"] and (tmp_path / "merged.png").is_file()
    parts[1].write_text(json.dumps({**both, "args": {**both["args"], "lr": 1e-3}}))
    with pytest.raises(SystemExit, match="differ"):  # runs with other flags are not merged
        main(["--merge", *map(str, parts), "--out", str(tmp_path / "x.png")])


def test_plan_spends_the_same_budget_and_refuses_a_switch_past_it():
    assert plan(120, 160, 1.0, 4.0) == 80  # 160 small steps cost 40 large ones
    with pytest.raises(SystemExit):
        plan(10, 40, 1.0, 4.0)


def test_compare_reads_midrun_against_grown0s_final_loss():
    def curve(losses, flops_per_eval):
        return [{"flops": i * flops_per_eval, "loss": v} for i, v in enumerate(losses)]

    runs = {
        "grown0": {"curve": curve([10.0, 8.0, 6.0], 50.0), "total_flops": 100.0},
        "midrun": {"curve": curve([10.0, 7.0, 5.0, 4.0], 20.0), "total_flops": 60.0 + 40.0},
        "random": {"curve": curve([10.0, 9.0, 8.0], 50.0), "total_flops": 100.0},
    }
    c = compare(runs)
    assert c["target"] == 6.0 and c["flops_to_target"]["midrun"] == pytest.approx(30.0)  # halfway from 20 to 40
    assert c["saving"]["midrun"] == pytest.approx(100.0 / 30.0)
    assert c["saving"]["random"] is None and flops_to_reach(runs["random"]["curve"], 6.0) is None
    assert c["loss_at_budget_fraction"]["0.5"] == {"grown0": 8.0, "midrun": pytest.approx(4.5), "random": 9.0}
    assert loss_at(runs["midrun"]["curve"], 100.0) == 4.0  # past its last evaluation: its last loss
    assert c["saving_to_stay"]["midrun"] == c["saving"]["midrun"]  # a monotone curve stays once it gets there
    bouncy = [{"flops": f, "loss": v} for f, v in [(0, 10.0), (10, 5.0), (20, 7.0), (30, 5.0)]]
    assert flops_to_reach(bouncy, 6.0) == pytest.approx(8.0) and flops_to_stay(bouncy, 6.0) == pytest.approx(25.0)
    assert flops_to_stay(bouncy[:3], 6.0) is None
