"""bench/swarm.py --model electra without the emulated network: the flags parse, the worker's model and training
inputs build and step on a tiny random pair, the source cut keeps the first layers only, and the rows, the
equal-samples comparison and the plot come out of synthetic worker results."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.swarmlib.electra import (
    HeldoutCurve,
    bench_config,
    eval_every,
    truncated_source,
    worker_parts,
    write_initial,
)
from bench.swarmlib.electra_runs import comparisons, electra_row, parse_run, plot
from peer.growth import SourceModel

REPO = Path(__file__).resolve().parents[2]


def test_help_lists_the_electra_options():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "swarm.py"), "--model", "electra", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=60,
    ).stdout
    assert "--local_steps" in out and "--runs" in out


def test_runs_parse_and_refuse_what_the_swarm_refuses():
    assert parse_run("sync/fp16").label == "sync/fp16"
    assert parse_run("diloco/fp16/100").inner_steps == 100
    assert parse_run("overlap/blockwise4bit", default_h=500).label == "overlap/blockwise4bit/500"
    for bad in ("diloco/blockwise4bit/100", "sync", "async/fp16", "overlap/fp16/0"):
        with pytest.raises(ValueError):
            parse_run(bad)


def tiny_opts() -> argparse.Namespace:
    return argparse.Namespace(
        electra_hidden=64, electra_layers=1, electra_init="random", batch=2, seq_len=32, eval_batches=1, lr=5e-4
    )


def test_worker_builds_the_real_pair_objective_and_data_and_steps(tmp_path):
    opts = tiny_opts()
    sizes = write_initial(opts, tmp_path / "initial")
    parts = worker_parts(opts, tmp_path / "initial", seed=0)
    assert sizes["parameters"] == sum(p.numel() for p in parts.params)
    assert bench_config(opts).train.warmup_steps == 0  # equal learning rates in sync and DiLoCo
    before = parts.evaluate()["loss"]
    out = parts.objective(next(parts.batches))
    out.loss.backward()
    assert all(p.grad is not None for p in parts.models.discriminator.parameters() if p.requires_grad)
    assert math.isfinite(before) and parts.evaluate()["loss"] == before  # same batches and masks: only weights count
    clock, steps = iter(range(100)), iter([3, 4, 4])
    curve = HeldoutCurve(parts.evaluate, lambda: next(steps), opts.batch, lambda: 1000 + next(clock), at=[4, 8])
    curve.open()
    assert curve() == {} and not curve.points  # step 3: not one of the chosen steps
    assert curve()["loss"] == before
    assert curve.points[0]["samples"] == 8 and curve.points[0]["tx_bytes"] == 1
    assert eval_every([10, 20, 30, 60]) == 10 and eval_every([]) == 0


def test_the_source_cut_keeps_the_first_layers():
    state = {f"encoder.layer.{i}.attention.x": torch.zeros(1) for i in range(6)} | {"embeddings.w": torch.zeros(1)}
    source = SourceModel(path=Path("."), model_type="bert", config={"num_hidden_layers": 6}, state=state)
    cut = truncated_source(source, 2)
    assert cut.config["num_hidden_layers"] == 2
    assert sorted(cut.state) == ["embeddings.w", "encoder.layer.0.attention.x", "encoder.layer.1.attention.x"]


def fake_results(losses: list[float], tx: int, steps: int = 20) -> list[dict]:
    def result(final: float) -> dict:
        curve = [dict(local_steps=s, samples=2 * s, tx_bytes=tx * s // steps, seconds=s, loss=9 - s / 10,
                      mlm_loss=1.0, disc_loss=0.1) for s in (0, 10)]  # fmt: skip
        curve.append(dict(curve[-1], local_steps=steps, loss=final, final=True))
        return dict(samples=2 * steps, wall_seconds=20.0, compute_seconds=19.0, eval_seconds=1.0, cpu_seconds=8.0,
                    step_seconds=0.5, tx_bytes=tx, round_tx_bytes=0, rounds=1, round_seconds=0.1, global_step=1,
                    gradient_steps=1, gradient_steps_local=0, catch_ups=0, rounds_averaged=1, parameters=1000,
                    local_steps=steps, curve=curve, final=curve[-1])  # fmt: skip

    return [result(loss) for loss in losses]


def test_rows_compare_at_equal_samples_and_plot(tmp_path):
    sync = electra_row(parse_run("sync/fp16"), 2, 0.4, fake_results([8.0, 8.0], tx=80_000))
    low = electra_row(parse_run("overlap/fp16/10"), 2, 0.4, fake_results([8.04, 8.0], tx=80))
    assert low["final_loss"] == pytest.approx(8.02) and low["util_ex_eval"] == pytest.approx(1.0)
    assert low["round_share"] == pytest.approx(0.2 / 38)  # 0.1 s in rounds of each peer's 19 s without evaluations
    # fp32 all-reduce among 2: 4 bytes per parameter per step, 20 steps each
    assert low["fp32_allreduce_bytes_per_peer"] == 80_000 and low["vs_fp32_allreduce"] == pytest.approx(1000)
    [line] = comparisons([sync, low])
    assert "1000x fewer bytes than fp32" in line and "1000x fewer bytes per sample than sync fp16" in line
    assert "at sync's 80 samples: 8.0200 vs sync 8.0000 (+0.25%)" in line
    assert plot([sync, low], tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0


def reference_opts(**kw) -> argparse.Namespace:
    return argparse.Namespace(**vars(tiny_opts()), local_steps=2, eval_at=[1], **kw)


def test_sync_reference_trains_every_peers_stream_on_one_model_deterministically(tmp_path):
    """The sync reference (bench/swarmlib/sync_reference.py) from checkpoint 0: a held-out point at 0, at each
    --eval_at step and at the end; the same inputs give the same curve; a second peer's stream changes it (its
    batches and masks are averaged in); fp16 transit changes it a little (what sync fp16 sends)."""
    from bench.swarmlib.sync_reference import sync_reference

    opts = reference_opts()
    write_initial(opts, tmp_path / "initial")
    two = sync_reference(opts, tmp_path / "initial", peers=2)
    assert [p["local_steps"] for p in two["curve"]] == [0, 1]
    assert two["samples"] == 2 * 2 * 2 and two["label"] == "sync-reference" and two["global_steps"] == 2
    assert math.isfinite(two["final_loss"]) and two["final_loss"] != two["initial_loss"]
    again = sync_reference(opts, tmp_path / "initial", peers=2)
    assert again["final_loss"] == two["final_loss"] and again["curve"][1]["loss"] == two["curve"][1]["loss"]
    one = sync_reference(opts, tmp_path / "initial", peers=1)
    assert one["final_loss"] != two["final_loss"]
    exact = sync_reference(opts, tmp_path / "initial", peers=2, codec="none")
    assert exact["final_loss"] != two["final_loss"]
    assert exact["final_loss"] == pytest.approx(two["final_loss"], rel=1e-2)
    with pytest.raises(ValueError, match="what sync may send"):
        sync_reference(opts, tmp_path / "initial", peers=2, codec="blockwise4bit")


def test_comparisons_put_every_row_beside_the_sync_reference_at_its_samples(tmp_path):
    sync = electra_row(parse_run("sync/fp16"), 2, 0.4, fake_results([8.0, 8.0], tx=80_000, steps=10))
    low = electra_row(parse_run("overlap/fp16/10"), 2, 0.4, fake_results([8.04, 8.0], tx=80))
    curve = [dict(local_steps=s, samples=2 * s, loss=9 - s / 10, tx_bytes=0, seconds=0.0) for s in (0, 10)]
    ref = dict(label="sync-reference", mode="reference", peers=2, samples=80, final_loss=8.0, initial_loss=9.0,
               local_steps=[20, 20], curve=curve)  # fmt: skip
    sync_line, low_line = comparisons([sync, low, ref])
    # sync's window: 10 local steps each, 40 samples, where the reference's curve says 8.0
    assert "sync/fp16 on the network at its 40 samples: 8.0000 vs the sync reference 8.0000 (+0.00%)" in sync_line
    assert "at its 80 samples: 8.0200 vs the sync reference 8.0000 (+0.25%)" in low_line
    assert plot([sync, low, ref], tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 0
