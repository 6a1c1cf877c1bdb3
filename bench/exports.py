"""Exports of the demo-sized model (MiniLM grown 2x wide by configs/demo.yaml: a 768x6 ELECTRA discriminator)
against its fp32 weights: size on disk, parameters and CPU latency at batch 1 x 128 tokens.

Grows the model once into ``--work`` (kept for the next run), writes the int8, distilled and pruned exports with
``coordinator.export`` on the embedded corpus (the demo's data), loads each export the way a user does (int8 and
pruned through the code they carry) and times a forward pass. The models take turns within each round, so a busy
machine slows them all alike; the figure is the median over ``--runs`` rounds after ``--warmup``.

    .venv/bin/python bench/exports.py --runs 20 --distill_steps 30
    .venv/bin/python bench/exports.py --forms int8 --threads 1 --runs 40 --work /tmp/ex-int8   # int8 vs fp32 only

Two clocks per pass: wall time (what a user waits, on an idle machine) and the CPU time the pass used (with
``--threads 1`` the calling thread's, ``time.thread_time``, where torch runs every op; with more threads the whole
process's). On a shared machine wall time mostly measures waiting for a core; CPU time does not, so the CPU-time
ratio is the firm figure there, and on an idle machine with one thread the two agree.

Score changes need ``coordinator evaluate`` (issue 23, not built yet): nothing here measures quality except the
distilled student's held-out discriminator loss/AUC next to the teacher's after its few steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def grow_demo(work: Path) -> Path:
    from peer.config import load_config
    from peer.growth.artifact import grow_to_dir

    out = work / "grown"
    if not (out / "growth.json").is_file():
        cfg = load_config(ROOT / "configs" / "demo.yaml")
        grow_to_dir(cfg.growth.source, cfg.model, cfg.growth, out)
    return out


FORMS = ("int8", "distilled", "pruned")
logger = logging.getLogger("exports")


def distilled_export(steps: int, student_layers: int | None = None) -> tuple:
    """(name in ``--work``, options) of the distilled export both benches make: ``distilled``, or
    ``distilled-Nlayers`` for a student of ``student_layers`` layers, so they time and score the same dir."""
    from coordinator.export import ExportOptions

    name = "distilled" if student_layers is None else f"distilled-{student_layers}layers"
    config = str(ROOT / "configs" / "demo.yaml")
    return name, ExportOptions(form="distilled", steps=steps, config=config, batch_size=8, batches=4,
                               student_layers=student_layers)  # fmt: skip


def ensure_export(grown: Path, options, out: Path) -> dict:
    """``out``'s ``export.json``, made from ``grown`` with ``options`` unless ``out`` already holds one; one made with
    another step count is refused rather than reused."""
    from coordinator.export import export

    if not (out / "export.json").is_file():
        started = time.perf_counter()
        export(grown, options, out)
        logger.info("exported %s in %.0f s", out.name, time.perf_counter() - started)
    note = json.loads((out / "export.json").read_text())
    if note["options"].get("steps") != options.steps:
        raise SystemExit(f"{out} was made with other options: remove it or use another --work")
    return note


def make_exports(grown: Path, work: Path, fractions: list[float], steps: int, forms=FORMS,
                 student_layers: int | None = None) -> dict[str, dict]:  # fmt: skip
    """The exports of ``forms`` in ``work`` (made there unless already), by name."""
    from coordinator.export import ExportOptions

    config = str(ROOT / "configs" / "demo.yaml")
    wanted = {}
    if "int8" in forms:
        wanted["int8"] = ExportOptions(form="int8")
    if "distilled" in forms:
        name, options = distilled_export(steps, student_layers)
        wanted[name] = options
    for f in fractions if "pruned" in forms else ():
        wanted[f"pruned-{f:g}"] = ExportOptions(form="pruned", fraction=f, config=config, batch_size=8, batches=4)
    return {name: ensure_export(grown, options, work / name) for name, options in wanted.items()}


def weight_bytes(d: Path) -> int:
    return (d / "model.safetensors").stat().st_size


def time_models(models: dict, runs: int, warmup: int, seq: int) -> tuple[dict[str, float], dict[str, float]]:
    """(median wall ms, median CPU ms) of one forward pass per model; CPU time is this thread's with one torch
    thread (torch then runs every op here), else the process's."""
    import torch

    cpu_clock = time.thread_time if torch.get_num_threads() == 1 else time.process_time
    torch.manual_seed(0)
    x = {"input_ids": torch.randint(1000, 20000, (1, seq)), "attention_mask": torch.ones(1, seq, dtype=torch.long)}
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for r in range(warmup + runs):
            for name, model in models.items():
                started, started_cpu = time.perf_counter(), cpu_clock()
                model(**x)
                if r >= warmup:
                    wall[name].append(time.perf_counter() - started)
                    cpu[name].append(cpu_clock() - started_cpu)
    median_ms = lambda t: {name: statistics.median(v) * 1000 for name, v in t.items()}  # noqa: E731
    return median_ms(wall), median_ms(cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/warmswarm-bench-exports", help="kept between runs (grown model, exports)")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--distill_steps", type=int, default=30)
    p.add_argument(
        "--student_layers",
        type=int,
        default=None,
        help="the distilled student's layers (default: half); its export is distilled-Nlayers",
    )
    p.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS), help="which exports to make and time")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args()
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error("--runs and --threads must be >= 1, --warmup >= 0")
    load_at_start = os.getloadavg()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_MODULES_CACHE", str(work / "hf_modules"))

    import torch
    from transformers import AutoModelForPreTraining
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    grown = grow_demo(work)
    notes = make_exports(grown, work, args.fractions, args.distill_steps, args.forms, args.student_layers)
    dirs = {"fp32": grown, **{name: work / name for name in notes}}
    models = {
        name: AutoModelForPreTraining.from_pretrained(d, trust_remote_code=name != "fp32").eval()
        for name, d in dirs.items()
    }
    latency, cpu_ms = time_models(models, args.runs, args.warmup, args.seq)
    fp32_bytes, fp32_params = weight_bytes(grown), sum(p.numel() for p in models["fp32"].parameters())
    rows = []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) + sum(
            b.numel() for b in model.buffers() if b.dtype == torch.int8
        )
        rows.append({
            "model": name,
            "weight_mb": weight_bytes(dirs[name]) / 1e6,
            "size_ratio": weight_bytes(dirs[name]) / fp32_bytes,
            "parameters_m": params / 1e6,
            "params_ratio": params / fp32_params,
            "latency_ms": latency[name],
            "speedup": latency["fp32"] / latency[name],
            "cpu_ms": cpu_ms[name],
            "cpu_speedup": cpu_ms["fp32"] / cpu_ms[name],
            "heads": notes.get(name, {}).get("result", {}).get("heads_after"),
        })  # fmt: skip
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 1 x {args.seq} tokens, "
          f"median of {args.runs} rounds")  # fmt: skip
    print("| model | weights MB | size vs fp32 | params (M) | params vs fp32 | heads | latency ms | speed-up "
          "| CPU ms | CPU speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["model"], f"{r['weight_mb']:.1f}", f"{r['size_ratio']:.1%}", f"{r['parameters_m']:.1f}"]
        cells += [f"{r['params_ratio']:.1%}", str(r["heads"] or "-"), f"{r['latency_ms']:.1f}", f"{r['speedup']:.2f}x"]
        cells += [f"{r['cpu_ms']:.1f}", f"{r['cpu_speedup']:.2f}x"]
        print("| " + " | ".join(cells) + " |")
    distilled = next((name for name in notes if name.startswith("distilled")), None)
    held = notes[distilled]["result"]["heldout"] if distilled else None
    if held is not None:
        print(f"distilled after {args.distill_steps} steps, held-out: {json.dumps(held)}")
    if args.json:
        loads = [load_at_start, os.getloadavg()]
        report = {"rows": rows, "distilled_heldout": held, "args": vars(args), "load_average_start_end": loads}
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
