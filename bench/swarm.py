"""Swarm benchmark on an emulated network: N peers in their own network namespaces on one bridge, each link shaped
with ``tc tbf`` (default 100 mbit), running the real ``peer.swarm`` stack (DHT, hivemind.Optimizer, train_loop).

Prints, per number of peers and averaging mode: compute utilisation (forward/backward time / wall time), bytes sent
per sample (veth tx counters), aggregate samples/s vs one peer; and the state-download MB/s vs the link rate.

Each peer stands for one volunteer's machine, so each gets the same CPU budget (``--cpu_per_peer`` cores, a cgroup
CPU quota over the peer and everything it starts: p2pd, hivemind's averager and DHT processes): N peers then have N
times the compute of one, as N volunteers do, instead of sharing whatever cores this machine has. The table shows
the cores each configuration actually used, so a budget that was not met is visible. The state download runs
without a quota: it measures the link.

Needs root (ip netns, tc, cgroups). Creates only namespaces and cgroups named ``wsb-*`` (``--prefix``) and removes
them on exit, also on Ctrl-C.

    sudo .venv/bin/python bench/swarm.py --peers 1 2 4

``--model electra`` trains the real thing instead of the MLP (``bench.swarmlib.electra``): the ELECTRA pair grown
from the embedded MiniLM, the ELECTRA objective on the embedded corpus, every peer for the same ``--local_steps``
(equal samples), held-out loss after the local steps ``--eval_at`` and at the end; one configuration per ``--runs``
entry (mode/codec[/H]); rows and curves to ``bench/results/swarm_electra.json`` and a PNG next to it:

    sudo .venv/bin/python bench/swarm.py --model electra --peers 2 4 --runs sync/fp16 diloco/fp16/100 \
        diloco/fp16/500 overlap/fp16/500 overlap/blockwise4bit/500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.swarmlib.cpu import CpuBudget  # noqa: E402
from bench.swarmlib.electra_runs import parse_run  # noqa: E402
from bench.swarmlib.netem import PREFIX, build_network, teardown  # noqa: E402
from bench.swarmlib.phases import run_phase, state_download  # noqa: E402
from bench.swarmlib.report import phase_row, print_report  # noqa: E402
from bench.swarmlib.worker import worker  # noqa: E402

WORKER_ONLY = ("worker", "index", "out", "mode", "initial", "codec", "model_dir")


def run_electra(opts: argparse.Namespace, root: Path, budget: CpuBudget | None, cores: float) -> None:
    """Every ``--runs`` entry with each number of peers (all entries for the first number first), the JSON rewritten
    after each configuration so that an interrupted run keeps what finished."""
    from bench.swarmlib.electra import write_initial
    from bench.swarmlib.electra_runs import electra_row, plot, print_electra, worker_flags, write_json

    runs = [parse_run(text, opts.inner_steps) for text in opts.runs]
    model_dir = root / "initial"
    sizes = write_initial(opts, model_dir)
    print(json.dumps(dict(model=sizes)), flush=True)
    out = Path(opts.json or REPO / "bench" / "results" / "swarm_electra.json")
    settings = {k: v for k, v in vars(opts).items() if k not in WORKER_ONLY}
    rows: list[dict] = []
    for n in opts.peers:
        for run in runs:
            where = root / f"{run.label.replace('/', '-')}-{n}"
            flags = tuple(worker_flags(run, opts, model_dir))
            results = run_phase(n, run.mode, opts, where, budget, flags, opts.prefix)
            rows.append(electra_row(run, n, cores, results))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "curves"}), flush=True)
            write_json(out, settings, sizes, rows, os.cpu_count())
        if opts.sync_reference:
            from bench.swarmlib.sync_reference import sync_reference

            rows.append(sync_reference(opts, model_dir, n))
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "curve"}), flush=True)
            write_json(out, settings, sizes, rows, os.cpu_count())
    print_electra(rows)
    png = out.with_suffix(".png")
    print(f"plot: {png}" if plot(rows, png) else "plot: skipped (no matplotlib)")


def orchestrate(opts: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("error: bench/swarm.py needs root (network namespaces and tc)")
    n_max = max(max(opts.peers), 2)
    prefix = opts.prefix
    teardown(n_max, prefix)
    root = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    rows = []
    cores = opts.cpu_per_peer if opts.cpu_per_peer is not None else min(1.0, 0.8 * (os.cpu_count() or 1) / n_max)
    budget = CpuBudget(n_max, cores, prefix) if cores > 0 else None
    try:
        build_network(n_max, opts.rate, prefix)
        if budget:
            budget.create()
        if opts.model == "electra":
            run_electra(opts, root, budget, cores)
            return
        for mode in opts.modes if not opts.state_only else []:
            for n in opts.peers:
                results = run_phase(n, mode, opts, root / f"{mode}-{n}", budget, prefix=prefix)
                rows.append(phase_row(mode, n, cores, results))
                print(json.dumps(rows[-1]), flush=True)
        dl = state_download(opts, root / "state") if opts.state_hidden > 0 else None
        if dl is not None:
            print(json.dumps(dict(state_download=dl)), flush=True)
    finally:
        teardown(n_max, prefix)
        if budget:
            budget.remove()
        print(f"(peer logs: {root})")
    print_report(rows, dl, opts)
    opts.json = opts.json or str(REPO / "bench" / "results" / "swarm.json")
    if opts.json:
        settings = {k: v for k, v in vars(opts).items() if k not in WORKER_ONLY}
        payload = dict(settings=settings, rows=rows, state_download=dl, machine_cores=os.cpu_count())
        Path(opts.json).write_text(json.dumps(payload, indent=1) + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument(
        "--modes",
        nargs="+",
        default=["sync", "overlap"],
        choices=["sync", "diloco", "overlap"],
        help="sync: all-reduce of fp32 gradients every step (the baseline); diloco: DiLoCo, the round inside step(); "
        "overlap: DiLoCo with the round in the background (swarm.overlap_rounds)",
    )
    p.add_argument("--rate", default="100mbit", help="tbf rate of every peer's link")
    p.add_argument("--seconds", type=float, default=330.0, help="training seconds per diloco / overlap configuration")
    p.add_argument("--sync_seconds", type=float, default=90.0, help="training seconds per sync configuration")
    p.add_argument(
        "--cpu_per_peer",
        type=float,
        default=None,
        help="CPU cores each peer may use (a cgroup quota); default: 80%% of this machine's cores over the largest "
        "number of peers, at most 1; 0: no quota (the peers share the machine)",
    )
    p.add_argument("--hidden", type=int, default=512, help="MLP width (params = 8 h^2)")
    p.add_argument(
        "--state_hidden", type=int, default=1024, help="MLP width for the state download (32 MB at 1024; 0: skip it)"
    )
    p.add_argument("--state_only", action="store_true", help="measure the state download alone")
    p.add_argument(
        "--json",
        default=None,
        help="write the rows here (default: bench/results/swarm.json, with --model electra swarm_electra.json "
        "and the plot next to it as .png)",
    )
    p.add_argument("--inner_steps", type=int, default=500, help="diloco: local steps per outer round (OpenDiLoCo: 500)")
    p.add_argument(
        "--compression",
        default="fp16",
        choices=["fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"],
        help="diloco: codec of the averaged parameters (sync always sends plain fp32: the all-reduce baseline)",
    )
    p.add_argument(
        "--momentum_compression",
        default="minmax8bit",
        choices=["none", "fp16", "scaled_fp16", "uniform8bit", "minmax8bit", "blockwise8bit"],
        help="diloco: codec of the outer momentum when it is averaged (momentum_sync average)",
    )
    p.add_argument("--progress_interval", type=float, default=1.0, help="seconds between hivemind progress records")
    p.add_argument(
        "--momentum_sync",
        default="default",
        choices=["default", "average", "catch_up"],
        help="diloco: swarm.momentum_sync (default: SwarmSpec's, catch_up for overlap and average for diloco)",
    )
    p.add_argument("--metrics_every", type=float, default=5.0, help="seconds between LocalMetrics records")
    p.add_argument(
        "--batch", type=int, default=None, help="samples per local step (default: 256; 8 with --model electra)"
    )
    p.add_argument(
        "--verbose", action="store_true", help="hivemind's per-round status lines in each peer's log (peer<i>.log)"
    )
    p.add_argument("--prefix", default=PREFIX, help="names of the namespaces and cgroups this run creates")
    electra = p.add_argument_group("--model electra (the real model; see bench/swarmlib/electra.py)")
    electra.add_argument("--model", default="mlp", choices=["mlp", "electra"])
    electra.add_argument(
        "--runs",
        nargs="+",
        default=["sync/fp16", "diloco/fp16/100", "diloco/fp16/500", "overlap/fp16/500", "overlap/blockwise4bit/500"],
        help="configurations, each mode/codec[/H] (replaces --modes, --compression and --inner_steps)",
    )
    electra.add_argument("--local_steps", type=int, default=600, help="local steps per peer (equal samples)")
    electra.add_argument(
        "--sync_reference",
        action="store_true",
        help="also run sync's trajectory without the network for --local_steps global steps of each number of "
        "peers (bench/swarmlib/sync_reference.py): the loss reference at equal samples where the netns sync run "
        "cannot get there in its window",
    )
    electra.add_argument(
        "--eval_at",
        type=int,
        nargs="+",
        default=[5, 10, 15, 20, 30, 40, 60, 100, 200, 300, 400, 500, 600],
        help="held-out evaluation after these local steps (and at the end)",
    )
    electra.add_argument("--eval_batches", type=int, default=8, help="held-out batches of --batch sequences")
    electra.add_argument("--seq_len", type=int, default=64)
    electra.add_argument("--lr", type=float, default=5e-4, help="AdamW's lr (constant; the run's default peak)")
    electra.add_argument("--electra_hidden", type=int, default=384, help="grown: MiniLM's 384 or wider")
    electra.add_argument("--electra_layers", type=int, default=2, help="grown: MiniLM's first this many layers")
    electra.add_argument("--electra_init", default="grown", choices=["grown", "random"])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    p.add_argument("--initial", nargs="*", default=[], help=argparse.SUPPRESS)
    p.add_argument("--role", default="train", help=argparse.SUPPRESS)
    p.add_argument("--codec", default="", help=argparse.SUPPRESS)
    p.add_argument("--model_dir", default="", help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.model == "electra" and not opts.worker:
        try:
            [parse_run(text, opts.inner_steps) for text in opts.runs]
        except ValueError as e:
            p.error(str(e))
    if opts.batch is None:  # workers always get it from the orchestrator
        opts.batch = 8 if opts.model == "electra" else 256
    if opts.worker:
        worker(opts)
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
