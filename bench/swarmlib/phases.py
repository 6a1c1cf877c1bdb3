"""What the orchestrator runs: one phase of N training workers in their namespaces, and the state download
(a donor and a joiner). Each worker is ``bench/swarm.py --worker`` in a session of its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.swarmlib.cpu import CpuBudget, CpuSampler
from bench.swarmlib.netem import PREFIX, netns
from peer.children import Child, ProcessSet

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "swarm.py"  # the worker's entry point


def start_worker(
    procs: ProcessSet, i: int, args: list[str], budget: CpuBudget | None = None, prefix: str = PREFIX
) -> Child:
    """Worker ``i`` in its namespace (and cgroup), in a session of its own, logging to ``procs.work/peer<i>.log``."""
    return procs.start(
        f"peer{i}",
        [
            "ip",
            "netns",
            "exec",
            netns(i, prefix),
            sys.executable,
            str(SCRIPT),
            "--worker",
            "--index",
            str(i),
            "--out",
            str(procs.work),
            *args,
        ],
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        preexec=(lambda: budget.enter(i)) if budget is not None else None,
    )


def workers(out: Path) -> ProcessSet:
    """The workers of one phase. Leaving the set early (Ctrl-C, a failed worker) kills every worker's session at
    once (p2pd included), without waiting for the others to leave the swarm; after a phase, ``procs.wait(180)``
    gives them time to leave on their own (slow on a loaded machine) first."""
    return ProcessSet(out, grace=0)


def wait_file(procs: ProcessSet, path: Path, timeout: float) -> dict:
    """The JSON file a worker writes; fails when a worker exits with an error, with its log tail."""

    def found() -> dict | None:
        return json.loads(path.read_text()) if path.is_file() else None

    return procs.wait_until(found, timeout, f"no {path.name} (peer logs in {path.parent})", retry_on=(ValueError,))


def run_phase(
    n: int,
    mode: str,
    opts: argparse.Namespace,
    out: Path,
    budget: CpuBudget | None,
    extra: tuple[str, ...] = (),
    prefix: str = PREFIX,
) -> list[dict]:
    """One configuration: ``n`` workers in ``mode`` (``extra``: more worker flags, e.g. a ``--runs`` entry's codec and
    H, and the ELECTRA settings); their results, each with the CPU seconds it used over its training window."""
    out.mkdir(parents=True)
    seconds = opts.sync_seconds if mode == "sync" else opts.seconds
    common = [
        "--mode",
        mode,
        "--peers",
        str(n),
        "--seconds",
        str(seconds),
        "--hidden",
        str(opts.hidden),
        "--inner_steps",
        str(opts.inner_steps),
        "--batch",
        str(opts.batch),
        "--metrics_every",
        str(opts.metrics_every),
        "--compression",
        opts.compression,
        "--momentum_compression",
        opts.momentum_compression,
        "--progress_interval",
        str(opts.progress_interval),
        "--momentum_sync",
        opts.momentum_sync,
        *(["--verbose"] if opts.verbose else []),
        *extra,
    ]
    sampler = CpuSampler(budget, n) if budget else None
    with workers(out) as procs:
        try:
            start_worker(procs, 0, common, budget, prefix)
            boot = wait_file(procs, out / "maddrs0.json", 300)["maddrs"]
            for i in range(1, n):
                start_worker(procs, i, [*common, "--initial", *boot], budget, prefix)
            results = [wait_file(procs, out / f"result{i}.json", seconds + 300) for i in range(n)]
        finally:
            if sampler:
                sampler.stop()
        procs.wait(180)
    for i, r in enumerate(results):
        r["cpu_seconds"] = sampler.between(i, r["train_start"], r["train_end"]) if sampler else float("nan")
    return results


def state_download(opts: argparse.Namespace, out: Path) -> dict:
    out.mkdir(parents=True)
    common = ["--mode", "sync", "--peers", "2", "--hidden", str(opts.state_hidden), "--role"]
    with workers(out) as procs:
        start_worker(procs, 0, [*common, "donor"])
        boot = wait_file(procs, out / "maddrs0.json", 300)["maddrs"]
        start_worker(procs, 1, [*common, "joiner", "--initial", *boot])
        result = wait_file(procs, out / "result1.json", 300)
        (out / "done").write_text("1")
        procs.wait(180)
    return result
