"""Fault injection with real processes: what survives a killed peer, a killed coordinator, an empty swarm, bad
records and attacker peers — and does a swarm leak memory over an hour?

    .venv/bin/python bench/faults.py                      # every scenario once; one table; bench/results/faults.json
    .venv/bin/python bench/faults.py peer_kill            # one scenario (see --help for the names)
    nice -n 10 .venv/bin/python bench/faults.py soak --peers 4 --duration 3600
    .venv/bin/python bench/faults.py soak --duration 1800 --trace_memory /tmp/trace   # + tracemalloc in averagers
    .venv/bin/python bench/faults.py soak --trace_report /tmp/trace                   # what grew, by call site

Every scenario starts a real ``python -m coordinator start`` and real ``python -m peer join`` processes on loopback
with a tiny model, and stops and reaps all of them (p2pd included) on exit, Ctrl-C, SIGTERM or a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faultlib.memtrace import format_report, trace_report  # noqa: E402
from bench.faultlib.scenarios import SCENARIOS, Row, run_scenario  # noqa: E402
from bench.faultlib.soak import GROWTH_TARGET, Growth, growth_of, run_soak, series_from_csv, write_json  # noqa: E402
from peer.memory import TRACE_ENV, TRACE_EVERY_ENV  # noqa: E402

RESULTS = ROOT / "bench" / "results"
logger = logging.getLogger("faults")


def _sigterm_as_interrupt(signum, frame) -> None:
    """SIGTERM takes the same path as Ctrl-C, so the process sets' context managers reap every child."""
    raise KeyboardInterrupt


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fault injection")
    for column in ("scenario", "measured", "figure", "target", "result"):
        table.add_column(column, overflow="fold")
    for row in rows:
        verdict = "[green]pass[/]" if row.passed else ("[yellow]n/a[/]" if row.passed is None else "[red]FAIL[/]")
        table.add_row(row.scenario, row.measured, row.figure, row.target, verdict)
    Console(width=160).print(table)


def soak_main(args: argparse.Namespace) -> int:
    if args.analyse:
        return analyse_main(args)
    if args.trace_report:
        return trace_report_main(Path(args.trace_report))
    if args.trace_memory:  # the peers (children) inherit it; their averager processes trace themselves
        os.environ[TRACE_ENV] = str(Path(args.trace_memory).resolve())
        os.environ[TRACE_EVERY_ENV] = str(args.trace_every)
    if not args.interval > 0 or not args.duration > 0:
        print(f"error: --interval and --duration must be > 0 seconds, got {args.interval} and {args.duration}",
              file=sys.stderr)  # fmt: skip
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="ws-soak-"))
    png = Path(args.png) if args.png else RESULTS / "soak_rss.png"
    logger.info("soak: %d peers for %.0f s, logs and rss.csv in %s", args.peers, args.duration, work)
    result = run_soak(work, args.peers, args.duration, args.interval, args.window, png=png, warmup=args.warmup)
    out = Path(args.out) if args.out else RESULTS / "soak.json"
    write_json(result, out)
    print(
        f"soak: {result.peers} peers, {result.duration_s:.0f} s, {result.samples} samples ~"
        f"{result.interval_s:g} s apart, global step {result.global_step_start} -> {result.global_step_end}, "
        f"checkpoints {result.checkpoints}, deaths {result.deaths or 'none'}"
    )
    passed = print_growth(result.growth, result.window_s, result.warmup_s) and result.passed
    print(f"wrote {out} and {png}; samples in {work / 'rss.csv'}")
    return 0 if passed else 1


def trace_report_main(directory: Path) -> int:
    """What grew in each traced averager process (``soak --trace_memory``), from its first to its last snapshot."""
    try:
        report = trace_report(directory)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not report:
        print(f"error: no process in {directory} has two snapshots yet", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


def analyse_main(args: argparse.Namespace) -> int:
    """The growth table of a finished soak's ``rss.csv`` with this call's ``--window`` / ``--warmup``."""
    path = Path(args.analyse)
    try:
        series = series_from_csv(path)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read soak samples from {path}: {e}", file=sys.stderr)
        return 2
    start = min(s.times[0] for s in series.values())
    end = max(s.times[-1] for s in series.values())
    if args.warmup + 2 * args.window > end - start:
        print(f"error: warm-up + 2 windows ({args.warmup + 2 * args.window:.0f} s) exceed the {end - start:.0f} s "
              f"in {path}", file=sys.stderr)  # fmt: skip
        return 2
    growth = growth_of(series, start, end, args.window, args.warmup)
    print(f"{path}: {end - start:.0f} s of samples, {len(series)} processes")
    return 0 if print_growth(growth, args.window, args.warmup) else 1


def print_growth(growth: list[Growth], window: float, warmup: float) -> bool:
    """Prints the growth table and the verdict; True if every process is under the target."""
    print(f"memory growth, mean of the {window:.0f} s from {warmup:.0f} s in -> mean of the last {window:.0f} s:")
    print(
        "| process | RSS first (MiB) | RSS last (MiB) | RSS growth | RssAnon first | RssAnon last | RssAnon growth "
        "| RssAnon trend (fit, context) | RssAnon floor (p10, context) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for g in growth:
        print(
            f"| {g.name} | {g.first_mib:.1f} | {g.last_mib:.1f} | {100 * g.growth:+.2f} % "
            f"| {g.anon_first_mib:.1f} | {g.anon_last_mib:.1f} | {100 * g.anon_growth:+.2f} % "
            f"| {100 * g.anon_trend:+.2f} % | {100 * g.anon_floor_growth:+.2f} % |"
        )
    worst = max(growth, key=lambda g: g.growth, default=None)
    worst_anon = max(growth, key=lambda g: g.anon_growth, default=None)
    passed = bool(growth) and all(g.passed for g in growth)
    if worst is not None and worst_anon is not None:
        print(
            f"worst: RSS {worst.name} {100 * worst.growth:+.2f} %, RssAnon {worst_anon.name} "
            f"{100 * worst_anon.anon_growth:+.2f} % (target < {100 * GROWTH_TARGET:.0f} % each): "
            f"{'pass' if passed else 'FAIL'}"
        )
    return passed


def scenarios_main(args: argparse.Namespace) -> int:
    """Runs the named scenario (or all), prints the table and writes the JSON. Running one scenario replaces only
    that scenario's rows in an existing JSON, so the table can be rebuilt one scenario at a time."""
    names = [args.scenario] if args.scenario != "all" else list(SCENARIOS)
    work = Path(args.work or tempfile.mkdtemp(prefix="ws-faults-"))
    out = Path(args.out) if args.out else RESULTS / "faults.json"
    results = json.loads(out.read_text()).get("scenarios", {}) if out.is_file() and args.scenario != "all" else {}
    for name in names:
        logger.info("scenario %s (work dir %s)", name, work / name)
        began = time.monotonic()
        rows = run_scenario(name, work / name)
        results[name] = {"rows": [row.to_dict() for row in rows], "seconds": round(time.monotonic() - began, 1)}
    ordered = {name: results[name] for name in SCENARIOS if name in results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"scenarios": ordered}, indent=2) + "\n")
    table = [Row(**row) for result in ordered.values() for row in result["rows"]]
    print_table(table)
    print(f"wrote {out}; logs in {work}")
    return 0 if all(row.passed is not False for row in table) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command")
    soak = sub.add_parser("soak", help="N peers + coordinator for a long time; RSS growth of every process")
    soak.add_argument("--peers", type=int, default=4)
    soak.add_argument("--duration", type=float, default=3600.0, help="seconds of sampling after all peers are alive")
    soak.add_argument(
        "--interval", type=float, default=2.0, help="mean seconds between RSS samples (each gap jittered +-50 %%)"
    )
    soak.add_argument("--window", type=float, default=600.0, help="first/last window compared (seconds)")
    soak.add_argument(
        "--warmup", type=float, default=300.0, help="seconds after all peers are alive before the first window"
    )
    soak.add_argument("--analyse", default=None, metavar="RSS_CSV", help="only recompute the table of a finished run")
    soak.add_argument("--work", default=None, help="work dir (default: a new temp dir)")
    soak.add_argument("--out", default=None, help="JSON result (default: bench/results/soak.json)")
    soak.add_argument("--png", default=None, help="RSS plot (default: bench/results/soak_rss.png)")
    soak.add_argument(
        "--trace_memory", default=None, metavar="DIR", help="tracemalloc snapshots of every averager process into DIR"
    )
    soak.add_argument("--trace_every", type=float, default=300.0, help="seconds between tracemalloc snapshots")
    soak.add_argument("--trace_report", default=None, metavar="DIR", help="only report what grew in DIR's snapshots")
    soak.set_defaults(func=soak_main)
    for name in ["all", *SCENARIOS]:
        p = sub.add_parser(name, help=SCENARIOS[name].help if name in SCENARIOS else "every scenario (the default)")
        p.add_argument("--work", default=None, help="work dir (default: a new temp dir)")
        p.add_argument("--out", default=None, help="JSON rows (default: bench/results/faults.json)")
        p.set_defaults(func=scenarios_main, scenario=name)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["all", *(argv or sys.argv[1:])])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted: every child process was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
