"""Many joiners at once on the emulated network: ``--donors`` peers hold the swarm's state, then 1 and then
``--joiners`` newcomers download it at the same moment, each peer in its own network namespace on one bridge with
its link shaped by ``tc tbf`` (default 100 mbit both ways), running the real stack (DHT, hivemind.Optimizer,
``peer.swarm.state.pull_state_from_peers``).

Per phase (method x joiners): each joiner's start-up (process start to "sees every donor") and download seconds
(from ``go``, given once every joiner is up, to its state loaded: the moment it could train), and the bytes each
donor's link sent. ``split``: this repository's download (tensor ranges over the donors of the newest state,
``peer.swarm.overrides.state_parts``); ``whole``: hivemind's (the whole state from one donor, highest priority
first, ties broken at random). A fresh run id and fresh donors per phase, so no phase sees another's peers.

Needs root (ip netns, tc). Creates only namespaces named ``wsj-*`` and removes them on exit, also on Ctrl-C.

    sudo .venv/bin/python bench/joiners.py --donors 4 --joiners 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.swarmlib.netem import build_network, netns, teardown  # noqa: E402
from bench.swarmlib.phases import wait_file, workers  # noqa: E402
from bench.swarmlib.report import parse_rate_mb  # noqa: E402

PREFIX = "wsj"
SCRIPT = Path(__file__).resolve()


def start(procs, i: int, role: str, out: Path, run_id: str, opts: argparse.Namespace, extra: list[str]):
    """Peer ``i`` (``role``) in its namespace, in a session of its own, logging to ``out/<role><i>.log``."""
    argv = ["ip", "netns", "exec", netns(i, PREFIX), sys.executable, str(SCRIPT), "--worker", role,
            "--index", str(i), "--out", str(out), "--run_id", run_id, "--hidden", str(opts.hidden),
            "--layers", str(opts.layers), "--donors", str(opts.donors), "--launched", repr(time.time()),
            *extra]  # fmt: skip
    return procs.start(f"{role}{i}", argv, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, cwd=REPO)


def run_phase(method: str, joiners: int, opts: argparse.Namespace, out: Path) -> dict:
    """Fresh donors, then ``joiners`` joiners started together; ``go`` once all of them see every donor."""
    out.mkdir(parents=True)
    run_id = f"joiners-{method}-{joiners}-{int(time.time())}"
    common = ["--method", method]
    with workers(out) as procs:
        start(procs, 0, "donor", out, run_id, opts, common)
        boot = wait_file(procs, out / "maddrs0.json", 300)["maddrs"]
        for i in range(1, opts.donors):
            start(procs, i, "donor", out, run_id, opts, [*common, "--initial", *boot])
        for i in range(opts.donors):
            wait_file(procs, out / f"maddrs{i}.json", 300)
        first = opts.donors
        for i in range(first, first + joiners):
            start(procs, i, "joiner", out, run_id, opts, [*common, "--initial", *boot])

        def all_ready() -> bool | None:
            return all((out / f"ready{i}").exists() for i in range(first, first + joiners)) or None

        procs.wait_until(all_ready, 600, "joiners never all saw the donors")
        (out / "go").write_text("1")
        joined = [wait_file(procs, out / f"result{i}.json", 900) for i in range(first, first + joiners)]
        (out / "done").write_text("1")
        donated = [wait_file(procs, out / f"result{i}.json", 120) for i in range(opts.donors)]
        procs.wait(120)
    # parameters and AdamW's two moments, fp32
    state_mb = 3 * opts.layers * (8 * opts.hidden**2 + 5 * opts.hidden) * 4 / 1e6
    return dict(
        method=method,
        joiners=joiners,
        donors=opts.donors,
        state_mb=state_mb,
        download_s=[round(r["download_s"], 2) for r in joined],
        startup_s=[round(r["startup_s"], 2) for r in joined],
        rx_mb=[round(r["rx_bytes"] / 1e6, 1) for r in joined],
        donor_tx_mb=[round(r["tx_bytes"] / 1e6, 1) for r in donated],
    )


def print_report(rows: list[dict], opts: argparse.Namespace) -> None:
    link = parse_rate_mb(opts.rate)
    print(f"\nstate {rows[0]['state_mb']:.1f} MB, {opts.donors} donors, links {opts.rate} ({link:.2f} MB/s) each way")
    print(f"{'method':6} {'joiners':>7} {'download s (max)':>16} {'mean':>6} {'vs 1 joiner':>11} {'start-up s':>10}  "
          f"MB sent by each donor")  # fmt: skip
    for row in rows:
        one = next((r for r in rows if r["method"] == row["method"] and r["joiners"] == 1), None)
        ratio = max(row["download_s"]) / max(one["download_s"]) if one else float("nan")
        print(f"{row['method']:6} {row['joiners']:7d} {max(row['download_s']):16.2f} "
              f"{statistics.mean(row['download_s']):6.2f} {ratio:10.2f}x {max(row['startup_s']):10.1f}  "
              f"{' '.join(f'{mb:.1f}' for mb in row['donor_tx_mb'])}")  # fmt: skip
    bound = max(1.0, max(opts.joiners) / opts.donors)
    print(f"(the donors' uplinks bound {max(opts.joiners)} joiners at {bound:.2f}x one joiner's download time)")


def orchestrate(opts: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        sys.exit("error: bench/joiners.py needs root (network namespaces and tc)")
    n = opts.donors + max(opts.joiners)
    teardown(n, PREFIX)
    root = Path(tempfile.mkdtemp(prefix="wsj-"))
    rows = []
    try:
        build_network(n, opts.rate, PREFIX)
        for method in opts.methods:
            for joiners in opts.joiners:
                rows.append(run_phase(method, joiners, opts, root / f"{method}-{joiners}"))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        teardown(n, PREFIX)
    print_report(rows, opts)
    if opts.json:
        internal = ("worker", "index", "out", "initial", "launched", "run_id", "method")  # the workers' own flags
        settings = {k: v for k, v in vars(opts).items() if k not in internal}
        Path(opts.json).write_text(json.dumps(dict(settings=settings, rows=rows), indent=1) + "\n")
    print(f"(peer logs: {root})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--donors", type=int, default=4, help="peers holding the state")
    p.add_argument("--joiners", type=int, nargs="+", default=[1, 8], help="joiners at once, one phase each")
    p.add_argument("--methods", nargs="+", default=["split", "whole"], choices=["split", "whole"])
    p.add_argument("--rate", default="100mbit", help="tbf rate of every peer's link")
    p.add_argument("--hidden", type=int, default=384, help="MLP width (params 8 h^2 per block; state 3x with AdamW)")
    p.add_argument("--layers", type=int, default=4, help="MLP blocks (h -> 4h -> h)")
    p.add_argument("--json", default=str(REPO / "bench" / "results" / "joiners.json"), help="write the rows here")
    p.add_argument("--worker", choices=["donor", "joiner"], help=argparse.SUPPRESS)
    p.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--run_id", default="", help=argparse.SUPPRESS)
    p.add_argument("--method", default="split", help=argparse.SUPPRESS)
    p.add_argument("--launched", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--initial", nargs="*", default=[], help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.worker:
        from bench.swarmlib import joining

        getattr(joining, opts.worker)(opts)
    else:
        orchestrate(opts)


if __name__ == "__main__":
    main()
