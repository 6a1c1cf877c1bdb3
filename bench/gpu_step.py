"""ELECTRA training-step throughput: the plain Hugging Face step vs this project's step, in one process, same device.

Plain HF (the baseline of issue 3): ElectraForMaskedLM generator + ElectraForPreTraining discriminator with tied
embeddings, SDPA attention, torch.compile, fused AdamW, bf16 autocast; Bernoulli 15 % masking, generator logits over
the whole sequence (full vocabulary projection), Gumbel sampling on the masked rows, HF's own losses.
This project: ``peer.objectives`` ELECTRA (static number of masked positions, vocabulary projection on masked rows
only, fp32 Gumbel-max on those rows) + ``peer.trainer.make_optimizer`` (fused AdamW on CUDA), same compile and bf16.

MFU = model FLOPs / time / peak, with model FLOPs = 6 x (matmul params x tokens) + attention 12 x layers x seq x
hidden per token, for generator and discriminator, the generator's vocabulary projection counted on masked positions
only (the same useful work for both steps, so the MFU ratio is the throughput ratio). Peak = a measured bf16 8192³
matmul on GPU (fp32 2048³ on CPU, with the CPU part's thread count).

One run prints the whole table: on a GPU, ELECTRA-small and base at batch 128 × seq 128, then the demo size
(``configs/demo.yaml``: its model, seq_len and per-step batch) on the CPU, eager fp32 with ``--cpu-threads`` threads
(2: the dev machine and a typical volunteer's laptop). A row that fails (compile error, out of memory) prints its
error and the run goes on; a failed compile is retried eager and labelled so. Results go to ``--json`` and, when the
environment sets ``$OUT`` (the device tool), to ``$OUT/gpu_step.json``, rewritten after every row so a run cut short
keeps what it measured. Needs only torch, transformers and pyyaml (no hivemind, no datasets).

    python3 bench/gpu_step.py                                   # GPU rows + CPU demo row (one device-tool call)
    python3 bench/gpu_step.py --compile-mode reduce-overhead    # the same with CUDA graphs
    .venv/bin/python bench/gpu_step.py --cpu-only               # no GPU needed: the CPU demo row alone
    .venv/bin/python bench/gpu_step.py --cpu-only --cpu-config configs/minilm-768x12-fineweb-edu.yaml --cpu-batch 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import ElectraForMaskedLM, ElectraForPreTraining  # noqa: E402

from peer.config import ModelSpec, RunConfig, TrainSpec, load_config  # noqa: E402
from peer.modeling import PretrainingModels, electra_configs, tie_generator_embeddings  # noqa: E402
from peer.objectives import build_objective  # noqa: E402
from peer.objectives.masking import max_predictions  # noqa: E402
from peer.trainer import compile_models, make_optimizer  # noqa: E402

VOCAB = 30522
CLS, SEP, MASK = 101, 102, 103
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"

GPU_SIZES = {
    # google-research/electra: small 256x12 (4 heads, FFN 1024, E 128, generator 64 wide); base 768x12, generator 256.
    "small": ModelSpec(hidden_size=256, num_layers=12, num_heads=4, ffn_size=1024, embedding_size=128,
                       generator_fraction=0.25),
    "base": ModelSpec(hidden_size=768, num_layers=12, num_heads=12, ffn_size=3072, generator_fraction=1 / 3),
}  # fmt: skip


@dataclass
class Row:
    """One size on one device: both steps' throughput, or the error that stopped it."""

    size: str
    device: str
    batch: int
    seq: int
    compiled: bool
    bf16: bool
    model_flops_per_step: float = 0.0
    hf_seq_per_s: float | None = None
    ours_seq_per_s: float | None = None
    hf_mfu: float | None = None
    ours_mfu: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.hf_seq_per_s and self.ours_seq_per_s:
            return self.ours_seq_per_s / self.hf_seq_per_s
        return None


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
    """Seconds per optimizer step (forward, backward, clip, AdamW), after ``warmup`` untimed steps."""
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


@dataclass
class Timing:
    steps: int
    warmup: int
    compile_mode: str | None  # None = eager


def time_variant(variant: str, spec: ModelSpec, row: Row, device: torch.device, timing: Timing):
    """Seconds per step of one variant, and the model FLOPs of one step."""
    compile_mode = timing.compile_mode
    models = build_pair(spec, device).train()
    if compile_mode is not None:
        if variant == "warmswarm":
            compile_models(models, mode=compile_mode)
        else:
            for m in models.modules():
                m.compile(mode=compile_mode)
    params = models.parameters()
    optimizer = make_optimizer(params, TrainSpec(lr=1e-4, weight_decay=0.01))
    step = make_step(variant, spec, models, random_batch(row.batch, row.seq, device))
    try:
        sec = time_steps(step, params, optimizer, device, row.bf16, timing.warmup, timing.steps)
        return sec, model_flops_per_step(models, row.batch, row.seq, max_predictions(row.seq, 0.15))
    finally:
        del models, optimizer, step
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_row(spec: ModelSpec, row: Row, device: torch.device, timing: Timing, peak: float) -> Row:
    """Times both variants into ``row``; a variant that fails leaves its cells empty and says why in the notes."""
    for variant in ("hf", "warmswarm"):
        try:
            try:
                sec, flops = time_variant(variant, spec, row, device, timing)
            except Exception as e:  # noqa: BLE001 - a failed compile is retried eager and labelled, not fatal
                if timing.compile_mode is None:
                    raise
                torch._dynamo.reset()
                row.notes.append(f"{variant}: compile failed ({_one_line(e)}); timed eager")
                eager = Timing(timing.steps, timing.warmup, None)
                sec, flops = time_variant(variant, spec, row, device, eager)
        except Exception as e:  # noqa: BLE001 - one failed row must not cost the rest of a one-shot device run
            row.notes.append(f"{variant}: failed: {_one_line(e)}")
            continue
        row.model_flops_per_step = flops
        if variant == "hf":
            row.hf_seq_per_s, row.hf_mfu = row.batch / sec, flops / sec / peak
        else:
            row.ours_seq_per_s, row.ours_mfu = row.batch / sec, flops / sec / peak
    return row


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _fmt(x: float | None, spec: str) -> str:
    return format(x, spec) if x is not None else "-"


def print_header() -> None:
    print(
        f"{'size':6} {'device':6} {'batch x seq':>11} {'HF seq/s':>10} {'ours seq/s':>11} {'ratio':>6} "
        f"{'HF MFU':>7} {'our MFU':>8}",
        flush=True,
    )


def print_row(row: Row) -> None:
    print(
        f"{row.size:6} {row.device:6} {f'{row.batch} x {row.seq}':>11} {_fmt(row.hf_seq_per_s, '10.1f')} "
        f"{_fmt(row.ours_seq_per_s, '11.1f')} {_fmt(row.ratio, '6.2f')} {_fmt(row.hf_mfu, '7.3f')} "
        f"{_fmt(row.ours_mfu, '8.3f')}",
        flush=True,
    )
    for note in row.notes:
        print(f"       note: {note}", flush=True)


def json_paths(args) -> list[Path]:
    paths = [Path(args.json)] if args.json else []
    if os.environ.get("OUT"):
        paths.append(Path(os.environ["OUT"]) / "gpu_step.json")
    return paths


def write_json(paths: list[Path], header: dict, rows: list[Row]) -> None:
    payload = {**header, "rows": [{**asdict(r), "ratio": r.ratio} for r in rows]}
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--device",
        choices=("auto", "cuda", "cpu"),
        default="auto",
        help="auto: the GPU rows when CUDA is present; cuda: fail unless it is; cpu: same as --cpu-only",
    )
    p.add_argument("--cpu-only", action="store_true", help="only the CPU demo row (no GPU needed)")
    p.add_argument("--quick", dest="cpu_only", action="store_true", help=argparse.SUPPRESS)  # the old name, README
    p.add_argument("--sizes", default="small,base", help="GPU sizes, comma list of: " + ",".join(GPU_SIZES))
    p.add_argument("--batch", type=int, default=128, help="GPU batch")
    p.add_argument("--seq", type=int, default=128, help="GPU sequence length")
    p.add_argument("--steps", type=int, default=20, help="timed GPU steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed GPU steps (compilation happens here)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="GPU rows eager")
    p.add_argument(
        "--compile-mode", default="default", help="torch.compile mode of both steps (reduce-overhead = CUDA graphs)"
    )
    p.add_argument("--no-cpu", dest="cpu", action="store_false", help="skip the CPU demo row")
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--cpu-steps", type=int, default=5)
    p.add_argument("--cpu-warmup", type=int, default=2)
    p.add_argument(
        "--cpu-config",
        default=str(DEMO_CONFIG),
        help="run config whose model, seq_len and batch the CPU row times (default: configs/demo.yaml; "
        "bench/gpu_check.sh --dry-run gives a tiny one)",
    )
    p.add_argument(
        "--cpu-batch",
        type=int,
        default=None,
        help="the CPU row's batch instead of the config's (a CPU volunteer runs a realistic config at a few sequences)",
    )
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("error: --device cuda asked for, but torch sees no CUDA device (run with --cpu-only)", file=sys.stderr)
        return 2
    unknown = [s for s in args.sizes.split(",") if s not in GPU_SIZES]
    if unknown:
        print(f"error: unknown size {unknown[0]!r} (known: {', '.join(GPU_SIZES)})", file=sys.stderr)
        return 2
    if args.cpu_batch is not None and args.cpu_batch < 1:
        print(f"error: --cpu-batch must be >= 1, got {args.cpu_batch}", file=sys.stderr)
        return 2
    gpu = cuda and not args.cpu_only and args.device != "cpu"
    if not gpu and not args.cpu:
        print("error: nothing to run: no GPU rows (no CUDA or --cpu-only) and --no-cpu", file=sys.stderr)
        return 2
    if not gpu and args.device == "auto" and not args.cpu_only:
        print("no CUDA device: running the CPU demo row only", flush=True)
    header: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }
    rows: list[Row] = []
    outputs = json_paths(args)
    print_header()
    if gpu:
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        peak = measure_peak(device)
        header.update(gpu=torch.cuda.get_device_name(), gpu_peak_flops=peak, gpu_compile_mode=args.compile_mode)
        print(f"# GPU {header['gpu']}, bf16 peak {peak / 1e12:.0f} TFLOP/s, compile {args.compile}", flush=True)
        for name in args.sizes.split(","):
            row = Row(name, "cuda", args.batch, args.seq, compiled=args.compile, bf16=True)
            timing = Timing(args.steps, args.warmup, args.compile_mode if args.compile else None)
            rows.append(bench_row(GPU_SIZES[name], row, device, timing, peak))
            print_row(row)
            write_json(outputs, header, rows)
    if args.cpu:
        torch.set_num_threads(args.cpu_threads)
        device = torch.device("cpu")
        cpu_config = Path(args.cpu_config)
        demo = load_config(cpu_config)
        peak = measure_peak(device)
        header.update(cpu_threads=args.cpu_threads, cpu_peak_flops=peak, load_average=os.getloadavg())
        print(
            f"# CPU ({args.cpu_threads} threads), measured fp32 peak {peak / 1e9:.0f} GFLOP/s, eager fp32, demo size "
            f"from {cpu_config}: {demo.model.hidden_size}x{demo.model.num_layers}, "
            f"generator x{demo.model.generator_fraction}; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        batch = args.cpu_batch or demo.train.batch_size
        row = Row(cpu_config.stem, "cpu", batch, demo.data.seq_len, compiled=False, bf16=False)
        rows.append(bench_row(demo.model, row, device, Timing(args.cpu_steps, args.cpu_warmup, None), peak))
        print_row(row)
        write_json(outputs, header, rows)
    for path in outputs:
        print(f"wrote {path}")
    return 0 if all(r.ratio is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
