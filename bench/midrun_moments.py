"""Does growing Adam's moments with the parameters matter after a mid-run switch? The same run three times per seed,
through ``peer train``'s loop (``peer.trainer.train`` with a growth schedule), differing only in the optimizer state
the switch hands the grown pair:

- ``grown``: ``peer.growth.optimizer_state`` (moments mapped like the gradient and its square, step kept);
- ``fresh``: no state (a new AdamW: its first step is lr·sign(g) everywhere and bias correction starts over);
- ``like_weights``: the moments grown by the parameters' own map (the plausible mistake: split ÷c like a weight);
- ``no_growth``: the control, the small pair trained on without a switch (same batches, masks and schedule).

Real objective (ELECTRA) and data (the embedded corpus, the MiniLM tokenizer), a small pair trained from random init
for ``--switch-at`` steps, then grown 2x in every width (exact) and trained ``--after`` more steps; the LR schedule
spans the whole run. Same seed → same small phase, batches, masks and dropout in all three. Reports the held-out loss
just before and just after the switch (all three equal: the parameters are the same) and at steps after it, mean
and range over seeds; writes ``bench/results/midrun_moments.json``.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/midrun_moments.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import time
from functools import partial
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.config import DataSpec, GrowthSpec, GrowthStage, ModelSpec, RunConfig, StageModel, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.growth import DEFAULT_SOURCE, resolve_source
from peer.growth.midrun import grow_pair_width, grow_stage, stack_layers, stage_layer_map
from peer.modeling import build_models
from peer.objectives import build_objective
from peer.trainer import StepReport, train

logger = logging.getLogger("bench.midrun_moments")
VARIANTS = ("grown", "fresh", "like_weights", "no_growth")
WIDE = StageModel(hidden_size=128, num_heads=4, ffn_size=512)  # every width 2x, the generator's too


def switch_growth(kind: str):
    """A ``GrowStage`` that grows the parameters exactly and hands the optimizer the ``kind`` of state."""

    def grow(models, states, old, new):
        grown, grown_states = grow_stage(models, states, old, new, "stack")
        if kind == "fresh":
            return grown, {}
        if kind == "like_weights":
            width = partial(grow_pair_width, old=old, new=new)
            depth = partial(stack_layers, layer_map=stage_layer_map(old, new, "stack"))
            like = {
                k: depth(width({n: s[k].double().cpu() for n, s in states.items()})) for k in ("exp_avg", "exp_avg_sq")
            }
            return grown, {n: {"step": states[n]["step"], **{k: like[k][n] for k in like}} for n in like["exp_avg"]}
        return grown, grown_states

    return grow


def run(kind: str, seed: int, cfg: RunConfig, tokenizer, heldout, args) -> dict:
    if kind == "no_growth":
        cfg = dataclasses.replace(cfg, growth=GrowthSpec())
    torch.manual_seed(seed)  # dropout
    models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id, seed=seed)
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=seed)
    batches = build_train_batches(cfg.data, tokenizer, cfg.train.batch_size, "electra", shuffle_seed=seed)
    after: dict[int, dict] = {}
    train_loss: dict[int, float] = {}

    def on_step(report: StepReport) -> None:
        if report.step > args.switch_at:
            train_loss[report.step] = report.metrics["loss"]
        if report.eval_metrics is not None:
            after[report.step] = report.eval_metrics

    start = time.time()
    result = train(cfg, models, objective, batches, heldout, resume=False, on_step=on_step,
                   grow_stage=None if kind == "no_growth" else switch_growth(kind))  # fmt: skip
    switch = result.switches[0] if result.switches else None
    at_switch = switch.heldout_before if switch else after[args.switch_at]
    logger.info("seed %d %s: held-out loss %.4f at the switch step, %.4f at the end (%.0f s)", seed, kind,
                at_switch["loss"], result.eval_metrics["loss"], time.time() - start)  # fmt: skip
    return {
        "switch": switch
        and {"before": switch.heldout_before, "after": switch.heldout_after, "parameters": switch.parameters},
        "heldout": {step: m for step, m in sorted(after.items()) if step > args.switch_at},
        "train_loss": train_loss,
    }


def summary(per_seed: dict[int, dict], args) -> dict:
    """Per variant and held-out step after the switch: mean, min and max over seeds of loss, mlm_loss, disc_loss."""
    out: dict = {"switch_rel_change": [], "variants": {}}
    for runs in per_seed.values():
        s = runs["grown"]["switch"]
        out["switch_rel_change"].append(abs(s["after"]["loss"] / s["before"]["loss"] - 1))
    steps = sorted(next(iter(per_seed.values()))["grown"]["heldout"])
    for kind in VARIANTS:
        rows = {}
        for step in steps:
            row = {}
            for part in ("loss", "mlm_loss", "disc_loss"):
                values = [runs[kind]["heldout"][step][part] for runs in per_seed.values()]
                row[part] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
            rows[step] = row
        first = [sum(list(runs[kind]["train_loss"].values())[: args.first]) / args.first for runs in per_seed.values()]
        out["variants"][kind] = {"heldout": rows, f"train_loss_first_{args.first}_steps_after": first}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--switch-at", type=int, default=100)
    p.add_argument("--after", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--first", type=int, default=5, help="train loss averaged over this many steps after the switch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--out", default="bench/results/midrun_moments.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("peer").setLevel(logging.WARNING)
    small = ModelSpec(hidden_size=64, num_heads=2, ffn_size=256, num_layers=2, max_position_embeddings=args.seq_len,
                      generator_fraction=0.5)  # fmt: skip
    cfg = RunConfig(
        model=small,
        growth=GrowthSpec(schedule=[GrowthStage(args.switch_at, WIDE)]),
        data=DataSpec(seq_len=args.seq_len),
        train=TrainSpec(lr=args.lr, warmup_steps=args.switch_at // 5, total_steps=args.switch_at + args.after,
                        batch_size=args.batch_size, eval_every=args.eval_every, checkpoint_every=0,
                        eval_batches=args.eval_batches, precision="fp32"),
    )  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(resolve_source(DEFAULT_SOURCE))
    heldout = build_heldout_batches(cfg.data, tokenizer, args.batch_size, "electra", args.eval_batches)
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        per_seed[seed] = {kind: run(kind, seed, cfg, tokenizer, heldout, args) for kind in VARIANTS}
    agg = summary(per_seed, args)
    for part in ("loss", "mlm_loss", "disc_loss"):
        print(f"held-out {part} after the switch step, mean [min, max] over seeds {args.seeds}")
        for kind, v in agg["variants"].items():
            cells = " ".join(f"+{s - args.switch_at}: {r[part]['mean']:.3f} [{r[part]['min']:.3f}, "
                             f"{r[part]['max']:.3f}]" for s, r in v["heldout"].items())  # fmt: skip
            print(f"  {kind:>12} {cells}")
    print(f"held-out loss change across the switch: max rel {max(agg['switch_rel_change']):.2e}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "args": vars(args), "model": {"small": vars(small), "grown": "hidden 128, heads 4, ffn 512, layers 2"},
        "summary": agg, "per_seed": per_seed,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "loadavg_at_end": os.getloadavg()},
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
