"""The parts that run as one child process each (their own CUDA context, freed before the next part starts):
``bench/gpu_step.py``'s table and ``bench/offload_copies.py``; each returns its JSON, its seconds and its error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.gpucheck.plan import Plan

ROOT = Path(__file__).resolve().parents[2]


def run_gpu_step(plan: Plan, out: Path, tiny_config: Path | None) -> dict:
    """``bench/gpu_step.py`` as a child (its own CUDA context, freed before the swarm starts); its JSON or the error."""
    path = out / "gpu_step.json"
    argv = [sys.executable, str(ROOT / "bench" / "gpu_step.py"), *plan.gpu_step_args, "--json", str(path)]
    if tiny_config is not None:
        argv += ["--cpu-config", str(tiny_config)]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # gpu_step also writes $OUT/gpu_step.json otherwise
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.gpu_step_timeout, env=env, cwd=ROOT)
        (out / "gpu_step.log").write_text(done.stdout + done.stderr)
        print(done.stdout, end="", flush=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as e:
        (out / "gpu_step.log").write_text(str(e.stdout or "") + str(e.stderr or ""))
        error = f"gpu_step.py ran past {plan.gpu_step_timeout:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {**result, "seconds": time.monotonic() - started, "error": error}


def run_offload_copies(plan: Plan, out: Path) -> dict:
    """``bench/offload_copies.py`` as a child: sync mode's offloaded buffers (pinned or not) and its host <-> device
    copy times per global step; its JSON or the error."""
    path = out / "offload_copies.json"
    argv = [sys.executable, str(ROOT / "bench" / "offload_copies.py"), *plan.offload_args, "--json", str(path)]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.offload_timeout, cwd=ROOT)
        (out / "offload_copies.log").write_text(done.stdout + done.stderr)
        print(done.stdout, end="", flush=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as e:
        (out / "offload_copies.log").write_text(str(e.stdout or "") + str(e.stderr or ""))
        error = f"offload_copies.py ran past {plan.offload_timeout:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {**result, "seconds": time.monotonic() - started, "error": error}
