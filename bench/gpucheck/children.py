"""The parts that run as one child process each (their own CUDA context, freed before the next part starts):
``bench/gpu_step.py``'s table, ``bench/offload_copies.py`` and the CUDA-only tests under pytest; each returns its
figures, its seconds and its error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.gpucheck.plan import Plan

ROOT = Path(__file__).resolve().parents[2]
# the tests whose CUDA path only a GPU exercises (page-locked host buffers, asynchronous saves); on a CPU they skip it
CUDA_TESTS = ("tests/peer/swarm/test_good_state.py", "tests/peer/swarm/test_host_buffers.py")
SKIPPED = re.compile(r"^SKIPPED \[(\d+)\] (\S+): (.*)$", re.M)  # pytest -rs: count, file:line, reason
PYTEST_SUMMARY = re.compile(
    r"^=*\s*(\d+ (?:passed|failed|skipped|errors?|deselected|xfailed|xpassed)\b.* in [\d.]+s.*?)\s*=*$", re.M
)
NO_CUDA = re.compile(r"cuda|gpu", re.I)  # a skip reason that says the test needs CUDA


def _run_json_child(name: str, argv: list[str], out: Path, timeout: float, env: dict | None = None) -> dict:
    """``argv`` (a bench script writing ``OUT/<name>.json``) as a child: its log in ``OUT/<name>.log``, its stdout
    echoed, and its JSON with ``seconds`` and ``error`` (None, the exit code with its stderr tail, or a timeout)."""
    path = out / f"{name}.json"
    started = time.monotonic()
    try:
        done = subprocess.run([*argv, "--json", str(path)], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)  # fmt: skip
        (out / f"{name}.log").write_text(done.stdout + done.stderr)
        print(done.stdout, end="", flush=True)
        error = None if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[-500:]}"
    except subprocess.TimeoutExpired as e:
        (out / f"{name}.log").write_text(str(e.stdout or "") + str(e.stderr or ""))
        error = f"{name}.py ran past {timeout:.0f} s"
    result = json.loads(path.read_text()) if path.exists() else {}
    return {**result, "seconds": time.monotonic() - started, "error": error}


def run_gpu_step(plan: Plan, out: Path, tiny_config: Path | None) -> dict:
    """``bench/gpu_step.py`` as a child (its own CUDA context, freed before the swarm starts); its JSON or the error."""
    argv = [sys.executable, str(ROOT / "bench" / "gpu_step.py"), *plan.gpu_step_args]
    if tiny_config is not None:
        argv += ["--cpu-config", str(tiny_config)]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}  # gpu_step also writes $OUT/gpu_step.json otherwise
    return _run_json_child("gpu_step", argv, out, plan.gpu_step_timeout, env)


def run_offload_copies(plan: Plan, out: Path) -> dict:
    """``bench/offload_copies.py`` as a child: sync mode's offloaded buffers (pinned or not) and its host <-> device
    copy times per global step; its JSON or the error."""
    argv = [sys.executable, str(ROOT / "bench" / "offload_copies.py"), *plan.offload_args]
    return _run_json_child("offload_copies", argv, out, plan.offload_timeout)


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def read_pytest_output(text: str) -> tuple[str | None, list[dict]]:
    """pytest's summary line (``3 passed, 1 skipped in 9.12s``) and its ``-rs`` skips: count, where, reason."""
    summaries = PYTEST_SUMMARY.findall(text)
    skipped = [{"count": int(n), "where": where, "reason": why} for n, where, why in SKIPPED.findall(text)]
    return (summaries[-1] if summaries else None), skipped


def cuda_tests_error(
    device: str, rc: int | None, summary: str | None, skipped: list[dict], timeout: float, tail: str = ""
) -> str | None:
    """Why the CUDA tests part failed, or None: pytest cut off, a failure, or (on a GPU only) a test that skipped for
    lack of CUDA, so its CUDA path went unchecked. On the dry run's CPU those skips are expected."""
    if rc is None:
        return f"pytest ran past {timeout:.0f} s"
    if rc != 0:
        return f"exit {rc}: {summary or tail.strip()[-500:]}"
    no_cuda = sum(s["count"] for s in skipped if NO_CUDA.search(s["reason"]))
    if device == "cuda" and no_cuda:
        return f"{no_cuda} test(s) skipped for lack of CUDA on the GPU machine"
    return None


def run_cuda_tests(plan: Plan, out: Path) -> dict:
    """``CUDA_TESTS`` under pytest as a child, its output in ``OUT/cuda_tests.log``: exit code, summary line and every
    skip with its reason (``skipped_for_no_cuda``: how many skipped for lack of CUDA; a failure on a GPU)."""
    argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *CUDA_TESTS]
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.cuda_tests_timeout, env=env, cwd=ROOT)
        text, rc = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = _text(e.stdout) + _text(e.stderr), None
    (out / "cuda_tests.log").write_text(text)
    summary, skipped = read_pytest_output(text)
    return {
        "tests": list(CUDA_TESTS),
        "rc": rc,
        "summary": summary,
        "skipped": skipped,
        "skipped_for_no_cuda": sum(s["count"] for s in skipped if NO_CUDA.search(s["reason"])),
        "seconds": time.monotonic() - started,
        "error": cuda_tests_error(plan.device, rc, summary, skipped, plan.cuda_tests_timeout, text),
    }
