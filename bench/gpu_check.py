"""GPU evidence in one call: ``bench/gpu_step.py``'s table, then a 2-process ``peer join`` swarm sharing the one GPU.

What it measures and where each figure comes from:

- the training-step table (HF ELECTRA step vs ours: sequences/s, MFU) — ``bench/gpu_step.py``, written to
  ``OUT/gpu_step.json``;
- sync mode's offloaded optimizer: whether the host buffers that cross to the GPU are pinned, and the gradient
  (device -> host) and parameter (host -> device) copies' time per global step, against a pageable copy of the same
  gradients — ``bench/offload_copies.py``, written to ``OUT/offload_copies.json``;
- the CUDA-only tests (``tests/peer/swarm/test_good_state.py``, ``tests/peer/swarm/test_host_buffers.py``: page-locked
  host buffers, asynchronous saves) under pytest, output in ``OUT/cuda_tests.log``: exit code, summary line and every
  skip with its reason. On a GPU none may skip for lack of CUDA (this part fails if one does); on the dry run's CPU
  those skips are expected;
- the swarm: two real ``python -m peer join`` processes on the same GPU (``-c`` a run config written here, the
  second joining through the first's address), diloco with overlapped rounds, for ``--seconds`` of training each.
  Per peer: samples / the seconds between its "starting at global step" line and its exit, the last rate it logged,
  and its own compute utilisation (forward/backward time / wall time, from its exit line); for the swarm the sum,
  and MFU = that sum x the model's FLOPs per sequence (``gpu_step.model_flops_per_step``) / the peak ``gpu_step``
  measured;
- the GPU while the swarm trains: ``nvidia-smi`` sampled every 0.5 s (utilization.gpu: the share of time a kernel
  ran; memory.used: both peers together, its peak); the peers' host RSS and the machine's ``/dev/shm`` use (both
  peaks, sampled every second).

Everything goes to ``OUT/gpu_check.json`` (rewritten after each part, so a run cut short keeps what it measured) and
one summary is printed. ``--dry-run`` runs the same pipeline on the CPU at a tiny size (the CPU row of gpu_step on a
32-wide model, a 15 s swarm) so that it is tested without a GPU. The whole GPU run is held to ``--budget`` seconds
(the swarm gets what the parts before it leave), sized for one 10-minute device call with no network: everything it
needs is in the repository's .venv and the packaged MiniLM tokenizer.

    bench/gpu_check.sh OUT_DIR            # on the GPU machine
    bench/gpu_check.sh OUT_DIR --dry-run  # anywhere: 2-4 minutes on the loaded 2-core dev machine

Flags of ``peer join`` that do not exist yet are set through ``--set train.KEY=VALUE`` on its ``-c`` config (see
``bench.gpucheck.plan.peer_flags``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faultlib.procs import prepare_run  # noqa: E402
from bench.gpucheck.children import run_cuda_tests, run_gpu_step, run_offload_copies  # noqa: E402
from bench.gpucheck.plan import DRY_PLAN, GPU_PLAN  # noqa: E402
from bench.gpucheck.report import summary, write  # noqa: E402
from bench.gpucheck.samplers import gpu_name  # noqa: E402
from bench.gpucheck.swarm import run_swarm  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="output directory (gpu_check.json, gpu_step.json, logs)")
    p.add_argument("--dry-run", action="store_true", help="the same pipeline on the CPU at a tiny size")
    p.add_argument("--seconds", type=float, default=None, help="swarm training seconds (default 180; dry run 10)")
    p.add_argument(
        "--budget", type=float, default=450.0, help="GPU run: seconds for the whole run, the swarm shortened to fit"
    )
    args = p.parse_args(argv)
    plan = DRY_PLAN if args.dry_run else GPU_PLAN
    t0 = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and gpu_name() is None:
        print(
            "error: no GPU (nvidia-smi finds none): run with --dry-run to check the pipeline on the CPU",
            file=sys.stderr,
        )
        return 2
    report: dict = {
        "dry_run": args.dry_run,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "host": {
            "python": platform.python_version(),
            "cpu_cores": os.cpu_count(),
            "gpu": gpu_name(),
            "load_average": os.getloadavg(),
        },  # fmt: skip
        "gpu_step": None,
        "offload_copies": None,
        "cuda_tests": None,
        "swarm": None,
        "swarm_mfu": None,
    }
    write(out, report)
    averaging = {"averaging": "diloco", "overlap_rounds": True, "inner_steps": plan.inner_steps}
    run = prepare_run(out / "run", "gpucheck", plan.model, averaging)  # its config and random-init step-0 state
    tiny = None
    if args.dry_run:  # gpu_step's CPU row at the dry run's size
        tiny = out / "dry-run.yaml"
        shutil.copyfile(run.config, tiny)
    report["gpu_step"] = run_gpu_step(plan, out, tiny)
    write(out, report)
    report["offload_copies"] = run_offload_copies(plan, out)
    write(out, report)
    report["cuda_tests"] = run_cuda_tests(plan, out)
    write(out, report)

    seconds = args.seconds or plan.swarm_seconds
    if not args.dry_run:  # what the table left of the budget, less the peers' start (imports, CUDA, state) and exit
        seconds = max(min(seconds, args.budget - (time.monotonic() - t0) - 100.0), 30.0)
    report["swarm"] = swarm = run_swarm(plan, run, out, seconds)
    peak_key = "cpu_peak_flops" if plan.device == "cpu" else "gpu_peak_flops"
    peak = (report["gpu_step"] or {}).get(peak_key)
    if swarm["samples_per_second"] and peak:
        report["swarm_mfu"] = swarm["samples_per_second"] * swarm["flops_per_sequence"] / peak
    report["elapsed_seconds"] = time.monotonic() - t0
    write(out, report)
    for line in summary(report):
        print(line)
    print(f"wrote {out / 'gpu_check.json'} ({report['elapsed_seconds']:.0f} s)")
    ok = (
        report["gpu_step"]["error"] is None
        and report["offload_copies"]["error"] is None
        and report["cuda_tests"]["error"] is None
        and all(p["exit_code"] == 0 for p in swarm["peers"])
    )
    return 0 if ok and swarm["samples_per_second"] else 1


if __name__ == "__main__":
    sys.exit(main())
