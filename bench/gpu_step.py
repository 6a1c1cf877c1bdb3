"""ELECTRA training-step throughput: the plain Hugging Face step vs this project's step, in one process, same device.

Plain HF (the baseline of issue 3): ElectraForMaskedLM generator + ElectraForPreTraining discriminator with tied
embeddings, SDPA attention, torch.compile, fused AdamW, bf16 autocast; Bernoulli 15 % masking, generator logits over
the whole sequence (full vocabulary projection), Gumbel sampling on the masked rows, HF's own losses.
This project: ``peer.objectives`` ELECTRA (static number of masked positions, vocabulary projection on masked rows
only, fp32 Gumbel-max on those rows) + ``peer.trainer.make_optimizer`` (fused AdamW on CUDA), same compile and bf16.

MFU = model FLOPs / time / peak, with model FLOPs = 6 x (matmul params x tokens) + attention 12 x layers x seq x
hidden per token, for generator and discriminator, the generator's vocabulary projection counted on masked positions
only (the same useful work for both steps, so the MFU ratio is the throughput ratio). Peak = a measured bf16 8192³
matmul on GPU (fp32 2048³ on CPU).

    .venv/bin/python bench/gpu_step.py                      # GPU: small and base-128, batch 128, seq 128
    .venv/bin/python bench/gpu_step.py --device cpu --quick # CPU: demo sizes, few steps
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass

import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from peer.config import ModelSpec, RunConfig, TrainSpec
from peer.modeling import PretrainingModels, electra_configs, tie_generator_embeddings
from peer.objectives import build_objective
from peer.objectives.masking import max_predictions
from peer.trainer import compile_models, make_optimizer

VOCAB = 30522
CLS, SEP, MASK = 101, 102, 103

SIZES = {
    # google-research/electra: small 256x12 (4 heads, FFN 1024, E 128, generator 64 wide); base 768x12, generator 256.
    "small": ModelSpec(hidden_size=256, num_layers=12, num_heads=4, ffn_size=1024, embedding_size=128,
                       generator_fraction=0.25),
    "base": ModelSpec(hidden_size=768, num_layers=12, num_heads=12, ffn_size=3072, generator_fraction=1 / 3),
    # CPU demo size (--quick): the shape of small, fewer layers.
    "demo": ModelSpec(hidden_size=256, num_layers=4, num_heads=4, ffn_size=1024, embedding_size=128,
                      generator_fraction=0.25),
}  # fmt: skip


@dataclass
class Timing:
    seq_per_s: float
    mfu: float


def build_pair(spec: ModelSpec, device: torch.device) -> PretrainingModels:
    torch.manual_seed(0)
    disc_cfg, gen_cfg = electra_configs(spec, VOCAB)
    for c in (disc_cfg, gen_cfg):
        c._attn_implementation = "sdpa"
    disc, gen = ElectraForPreTraining(disc_cfg), ElectraForMaskedLM(gen_cfg)
    tie_generator_embeddings(gen, disc)
    return PretrainingModels(disc, gen).to(device)


def model_flops_per_step(models: PretrainingModels, bsz: int, seq: int, masked_per_seq: int) -> float:
    """6 x matmul params x tokens + attention, the vocabulary projection only on masked rows."""
    tokens = bsz * seq
    lm_head = models.generator.generator_lm_head
    matmul = sum(
        m.weight.numel()
        for module in models.modules()
        for m in module.modules()
        if isinstance(m, torch.nn.Linear) and m is not lm_head
    )
    flops = 6.0 * matmul * tokens + 6.0 * lm_head.weight.numel() * bsz * masked_per_seq
    for module in models.modules():
        c = module.config
        flops += 12.0 * c.num_hidden_layers * seq * c.hidden_size * tokens
    return flops


def measure_peak(device: torch.device) -> float:
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_batch(bsz: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (bsz, seq), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    special = ((ids == CLS) | (ids == SEP)).long()
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "special_tokens_mask": special,
        "word_start": torch.ones_like(ids),
    }
    return {k: v.to(device) for k, v in batch.items()}


def hf_step_fn(models: PretrainingModels, batch: dict, rng: torch.Generator):
    """The plain HF ELECTRA step: full-sequence generator logits (HF's MLM head) and HF's losses."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    cand = attn.bool() & ~batch["special_tokens_mask"].bool()
    chosen = (torch.rand(ids.shape, generator=rng, device=ids.device) < 0.15) & cand
    use_mask = torch.rand(ids.shape, generator=rng, device=ids.device) < 0.85
    masked = torch.where(chosen & use_mask, torch.full_like(ids, MASK), ids)
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    gen_out = models.generator(input_ids=masked, attention_mask=attn, labels=labels)
    with torch.no_grad():  # sample on the masked rows only (as electra-pytorch does), fp32 Gumbel-max
        rows = gen_out.logits[chosen].float()
        u = torch.rand(rows.shape, generator=rng, device=ids.device).clamp_(1e-9, 1 - 1e-7)
        sampled = (rows - torch.log(-torch.log(u))).argmax(-1)
    disc_in = ids.masked_scatter(chosen, sampled)
    disc_out = models.discriminator(input_ids=disc_in, attention_mask=attn, labels=(disc_in != ids).long())
    return gen_out.loss + 50.0 * disc_out.loss


def make_step(variant: str, spec: ModelSpec, models: PretrainingModels, batch: dict):
    """A closure computing one step's loss (no host sync: the project's metrics stay on device)."""
    if variant == "hf":
        rng = torch.Generator(device=batch["input_ids"].device).manual_seed(0)
        return lambda: hf_step_fn(models, batch, rng)
    objective = build_objective(RunConfig(model=spec), models, mask_token_id=MASK)
    return lambda: objective.forward(batch, objective.rng).loss


def time_steps(step, params, optimizer, device, amp, warmup: int, steps: int) -> float:
    """Seconds per optimizer step (forward, backward, clip, fused AdamW), after ``warmup`` untimed steps."""
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def one():
        with ctx():
            loss = step()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        one()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return (time.perf_counter() - t) / steps


def bench_size(name: str, args, device: torch.device, peak: float) -> dict[str, Timing]:
    spec = SIZES[name]
    amp = device.type == "cuda"
    train = TrainSpec(lr=1e-4, weight_decay=0.01)
    results = {}
    masked = max_predictions(args.seq, 0.15)
    for variant in ("hf", "warmswarm"):
        models = build_pair(spec, device).train()
        if args.compile and variant == "warmswarm":
            compile_models(models, mode=args.compile_mode)
        elif args.compile:
            for m in models.modules():
                m.compile(mode=args.compile_mode)
        params = models.parameters()
        optimizer = make_optimizer(params, train)
        step = make_step(variant, spec, models, random_batch(args.batch, args.seq, device))
        sec = time_steps(step, params, optimizer, device, amp, args.warmup, args.steps)
        flops = model_flops_per_step(models, args.batch, args.seq, masked)
        results[variant] = Timing(args.batch / sec, flops / sec / peak)
        if device.type == "cuda":
            del models, optimizer, step
            torch.cuda.empty_cache()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--sizes", default=None, help="comma list of small,base,demo (default: small,base; demo on --quick)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="CPU-sized: demo model, batch 8, 3 timed steps, no compile")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument(
        "--compile-mode", default="default", help="torch.compile mode of both steps (reduce-overhead = CUDA graphs)"
    )
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.quick:
        args.compile = False
    args.batch = args.batch or (8 if args.quick else 128)
    args.steps = args.steps or (3 if args.quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    sizes = (args.sizes or ("demo" if args.quick else "small,base")).split(",")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    peak = measure_peak(device)
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
        f"threads {torch.get_num_threads()}, peak {peak / 1e12:.2f} TFLOP/s, batch {args.batch} x seq {args.seq}, "
        f"compile {args.compile}, bf16 {device.type == 'cuda'}"
    )
    print(f"{'size':6} {'HF seq/s':>10} {'ours seq/s':>11} {'ratio':>6} {'HF MFU':>7} {'our MFU':>8}")
    for name in sizes:
        r = bench_size(name, args, device, peak)
        hf, ours = r["hf"], r["warmswarm"]
        print(
            f"{name:6} {hf.seq_per_s:10.1f} {ours.seq_per_s:11.1f} {ours.seq_per_s / hf.seq_per_s:6.2f} "
            f"{hf.mfu:7.3f} {ours.mfu:8.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
