"""``python -m coordinator start | status | download | evaluate | export | allowlist``: the organiser's and the
researcher's entry point.

Same error handling as ``python -m peer``: a ``UserError`` prints ``error: <one line>`` and exits 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.deployment import CHEAP_EXPORT_FORMS, EvaluationSettings, ExportSettings
from coordinator.evaluation import cli as evaluate_cli
from peer.entry import run_cli
from peer.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console

    from peer.run.coordinator_client import CheckpointsAnswer, PeersAnswer, ProgressAnswer


def _start(args: argparse.Namespace) -> int:
    from coordinator.preflight import refuse_early
    from peer.config import load_config

    # before the heavy imports (seconds on a busy machine): a bad config, data dir or port fails in a blink
    cfg = load_config(args.config, args.override)
    if args.checkpoint_every < 1 or args.keep_last < 1:
        raise UserError("--checkpoint_every and --keep_last must be at least 1")
    ports = {"--http_port": args.http_port, "--grpc_port": args.grpc_port, "--dht_port": args.dht_port}
    refuse_early(Path(args.data_dir), args.host, ports)
    from coordinator.deployment import CoordinatorSpec, EvaluationSettings
    from coordinator.evaluation.worker import evaluation_spec

    evaluation = EvaluationSettings(
        enabled=args.eval, tasks=evaluate_cli.names(args.eval_tasks), seeds=args.eval_seeds, steps=args.eval_steps
    )
    if evaluation.enabled:
        evaluation_spec(evaluation, {}).check()  # an unknown task or a bad count is refused before anything starts
    exports = ExportSettings(forms=export_forms(args.export_forms))
    from coordinator.service import start_coordinator

    spec = CoordinatorSpec(
        data_dir=Path(args.data_dir),
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        dht_port=args.dht_port,
        identity_path=Path(args.identity_path) if args.identity_path else None,
        public_host=args.public_host,
        checkpoint_every=args.checkpoint_every,
        keep_last=args.keep_last,
        alive_window=args.alive_window,
        monitor_interval=args.monitor_interval,
        state_timeout=args.state_timeout,
        init_from=Path(args.init_from) if args.init_from else None,
        allowlist=Path(args.allowlist) if args.allowlist else None,
        token_ttl=args.token_ttl,
        initial_peers=list(args.initial_peers),
        use_relay=args.use_relay,
        evaluation=evaluation,
        exports=exports,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    coordinator = start_coordinator(cfg, spec)
    signal.signal(signal.SIGHUP, lambda *_: coordinator.reload_allowlist())
    try:
        progress = coordinator.store.progress()
        latest = coordinator.ckpts.latest()
        print(f"coordinator for run {cfg.run_id!r} is up")
        print(f"  dashboard   http://{coordinator.public_host}:{coordinator.http_port}/")
        print(f"  gRPC        port {coordinator.grpc_port}")
        print(f"  DHT         {', '.join(coordinator.initial_peers)}")
        print(f"  history     global step {progress.global_step}, latest checkpoint {latest.name if latest else '-'}")
        e = spec.evaluation
        print(
            f"  evaluation  each new checkpoint, in the background: {', '.join(e.tasks) or 'all tasks'}, {e.seeds} "
            f"seeds, {e.steps} steps (logs in {spec.data_dir}/evaluations)"
            if e.enabled
            else "  evaluation  off (--no_eval)"
        )
        print(
            f"  exports     {', '.join(exports.forms)} of each checkpoint, in the background (download --form)"
            if exports.forms
            else "  exports     off (--export_forms none)"
        )
        if coordinator.private is not None:
            names = coordinator.private.authority.allowlist.names()
            print(f"  private     {len(names)} volunteers in {spec.allowlist}; tokens valid {spec.token_ttl:.0f} s")
        print("volunteers join with:")
        print(f"  {coordinator.join_command}")
        sys.stdout.flush()
        coordinator.wait(stop)
    finally:
        print("stopping...", file=sys.stderr)
        coordinator.stop()
    return 0


def export_forms(value: str) -> tuple[str, ...]:
    """``--export_forms``: comma-separated forms of ``coordinator.export`` (in the order given, once each), or
    ``none``; an unknown form is one line, before anything starts."""
    from coordinator.export.build import FORMS

    names = [n.strip() for n in value.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in FORMS]
    if unknown or not names:
        bad = (unknown or [value])[0]
        raise UserError(f"--export_forms: unknown form {bad!r} (known: {', '.join(FORMS)}, or none)")
    return tuple(dict.fromkeys(names))


def _status(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console

    from peer.run.coordinator_client import CheckpointsAnswer, PeersAnswer, ProgressAnswer, get_answer

    with httpx.Client(timeout=args.timeout) as client:
        progress = get_answer(args.url, ProgressAnswer, timeout=args.timeout, client=client)
        peers = get_answer(args.url, PeersAnswer, timeout=args.timeout, client=client)
        checkpoints = get_answer(args.url, CheckpointsAnswer, timeout=args.timeout, client=client)
    print_status(Console(), progress, peers, checkpoints)
    return 0


def _number(value: float | None, spec: str = "", per: float | None = None, unit: str = "") -> str:
    """``value`` (divided by ``per``) formatted, or ``-`` while the coordinator does not know it (no live peer, no
    step rate yet)."""
    if value is None:
        return "-"
    return f"{value / per if per else value:{spec}}{unit}"


def print_status(
    console: Console, progress: ProgressAnswer, peers: PeersAnswer, checkpoints: CheckpointsAnswer
) -> None:
    """``coordinator status``'s text. Every value the coordinator may not know yet (no peer alive, no step rate, no
    checkpoint) is shown as ``-`` or left out, never a crash."""
    from rich.markup import escape
    from rich.table import Table

    p = progress
    console.print(
        f"run [bold]{escape(p.run_id)}[/]: step {p.global_step}"
        + (f"/{p.total_steps}" if p.total_steps else "")
        + f", {p.alive_peers} alive peers, {_number(p.samples_per_second, '.1f')} samples/s, "
        + f"loss {_number(p.loss, '.4f')}"
        + (f", ETA {_number(p.eta_seconds, '.1f', 3600, ' h')}" if p.eta_seconds is not None else "")
    )
    table = Table("volunteer", "id", "samples", "online", "step", "alive")
    for peer in peers.peers:
        table.add_row(
            escape(peer.name),
            escape(peer.short_id),
            str(peer.samples),
            _number(peer.seconds_online, ".2f", 3600, " h"),
            _number(peer.step),
            "banned" if peer.banned else ("yes" if peer.alive else "no"),
        )
    console.print(table)
    listed = checkpoints.checkpoints
    latest = listed[-1] if listed else None
    console.print(
        f"{len(listed)} checkpoints" + (f", latest {escape(latest.name)} (step {latest.step})" if latest else "")
    )
    if latest is not None and latest.exports:
        console.print(f"exports of {escape(latest.name)}: {escape(', '.join(latest.exports))} (download --form FORM)")
    evaluated = [c for c in listed if c.evaluation is not None and c.evaluation.done]
    if evaluated:
        c = evaluated[-1]
        scores = ", ".join(
            f"{escape(s.task)} {s.metric} {_number(s.mean, '.3f')} ± {_number(s.sd, '.3f')}"
            for s in c.evaluation.scores
            if s.role == "checkpoint" and s.headline
        )
        console.print(f"evaluated {escape(c.name)} (step {c.step}): {scores or 'no downstream task'}")
    if latest is not None and latest.evaluation is not None and not latest.evaluation.done:
        e = latest.evaluation
        console.print(f"evaluation of {escape(latest.name)} failed {e.attempts} times: {escape(e.error)}")


def _evaluate_export(path, spec, progress):
    from coordinator.export.scores import evaluate_export

    return evaluate_export(path, spec, progress)


def _download(args: argparse.Namespace) -> int:
    from coordinator.export.build import FORMS
    from peer.logs import progress_on
    from peer.run.download import download

    if args.form and args.form not in FORMS:  # before the network: nothing is fetched
        raise UserError(f"unknown --form {args.form!r} (known: {', '.join(FORMS)}; none: the checkpoint itself)")
    started = time.perf_counter()
    result = download(
        args.source,
        args.out,
        checkpoint=args.checkpoint,
        retries=args.retries,
        timeout=args.timeout,
        include=args.include,
        exclude=args.exclude,
        form=args.form,
        progress=progress_on(),  # a bar on a terminal only: journald and CI logs read lines, not \r redraws
    )
    seconds = time.perf_counter() - started
    print(
        f"downloaded {f'the {result.form} export of ' if result.form else ''}{result.name} (step {result.step}) to "
        f"{result.out_dir}: {result.files} files, "
        f"{result.bytes_fetched / 1e6:.1f} MB fetched, {result.bytes_reused / 1e6:.1f} MB reused, "
        + (f"{result.skipped} files skipped, " if result.skipped else "")
        + f"sha256 verified, {seconds:.1f} s"
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    from coordinator.export.build import ExportOptions, check_options
    from peer.run.writable_dir import check_empty_out

    options = ExportOptions(
        form=args.form, fraction=args.fraction, steps=args.steps, config=args.config, seed=args.seed,
        batch_size=args.batch_size, batches=args.batches, student_layers=args.student_layers,
    )  # fmt: skip
    check_options(options)  # before the heavy imports: bad input is one line, at once, with nothing written
    check_empty_out(Path(args.out), "--out")
    if not Path(args.src).is_dir():
        raise UserError(f"SRC {args.src} is not a directory (give a checkpoint dir or a `peer grow` output)")
    from coordinator.export.build import export
    from coordinator.export.card import write_export_card
    from peer.config import load_config

    data = load_config(args.config).data if args.config else None  # None: the card says the corpus is unrecorded
    note = export(args.src, options, args.out, write_card=lambda tmp, n: write_export_card(tmp, n, data))
    source = note.source
    print(
        f"wrote {args.form} of {source.path.name} ({source.kind}, step {source.step}) to {args.out}: "
        f"{note.result.get('weight_bytes', 0) / 1e6:.1f} MB of weights, {note.seconds:.1f} s"
    )
    return 0


def _allowlist(args: argparse.Namespace) -> int:
    from coordinator.allowlist import add_volunteer, list_volunteers, remove_volunteer

    if args.action == "add":
        if args.url is not None:  # checked before the key is made: the line printed once must be right
            from peer.run.coordinator_client import coordinator_base_url

            coordinator_base_url(args.url, "--url")
        secret = add_volunteer(args.file, args.name)
        print(f"added {args.name} to {args.file}. Their key is shown only this once; send them this line privately:")
        print(f"  python -m peer join --coordinator {args.url or 'URL'} --auth_key {args.name}:{secret}")
    elif args.action == "remove":
        remove_volunteer(args.file, args.name)
        print(f"removed {args.name} from {args.file}: no new tokens; a token already issued lasts until it expires")
    else:
        entries = list_volunteers(args.file)
        for entry in entries:
            print(f"{entry.name}\t{entry.added or '-'}")
        print(f"{len(entries)} volunteers in {args.file}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coordinator", description="warmswarm coordinator")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = sub.add_parser("start", help="run the coordinator of a run (DHT, monitor, checkpoints, HTTP, gRPC)")
    start.add_argument("-c", "--config", required=True, help="run config YAML")
    start.add_argument("--override", action="append", default=[], metavar="SECTION.KEY=VALUE")
    start.add_argument("--data_dir", required=True, help="where the database, checkpoints and keys live")
    start.add_argument("--host", default="0.0.0.0", help="address to listen on (HTTP, gRPC, DHT)")
    start.add_argument("--public_host", default=None, help="address volunteers reach this machine at")
    start.add_argument("--http_port", type=int, default=8080)
    start.add_argument("--grpc_port", type=int, default=50051)
    start.add_argument("--dht_port", type=int, default=31337)
    start.add_argument("--identity_path", default=None, help="DHT identity file (default: DATA_DIR/dht_identity.key)")
    start.add_argument(
        "--initial_peers", nargs="*", default=[], metavar="MULTIADDR", help="nodes of the swarm to bootstrap from"
    )
    start.add_argument("--no_relay", action="store_false", dest="use_relay", help="do not use libp2p circuit relays")
    start.add_argument("--checkpoint_every", type=int, default=100, help="global steps between checkpoints")
    start.add_argument("--keep_last", type=int, default=3, help="checkpoints to keep")
    start.add_argument("--alive_window", type=float, default=60.0, help="seconds a silent peer still counts alive")
    start.add_argument("--monitor_interval", type=float, default=5.0, help="seconds between monitor passes")
    start.add_argument("--state_timeout", type=float, default=300.0, help="seconds to wait for the swarm's state")
    start.add_argument("--init_from", default=None, help="use this model dir as checkpoint 0 instead of growing")
    start.add_argument(
        "--allowlist",
        default=None,
        metavar="FILE",
        help="make the run private: only volunteers in FILE get access tokens (see `allowlist add`); "
        "re-read when it changes or on SIGHUP",
    )
    start.add_argument("--token_ttl", type=float, default=3600.0, help="seconds an access token stays valid")
    light = EvaluationSettings()
    start.add_argument("--no_eval", action="store_false", dest="eval",
                       help="do not evaluate each new checkpoint in the background")  # fmt: skip
    start.add_argument("--eval_tasks", default="", metavar="TASKS",
                       help="comma-separated downstream tasks of the background evaluation (default: all)")  # fmt: skip
    start.add_argument("--eval_seeds", type=int, default=light.seeds,
                       help="fine-tuning seeds per task, background evaluation (default: %(default)s)")  # fmt: skip
    start.add_argument("--eval_steps", type=int, default=light.steps,
                       help="fine-tuning steps per seed, background evaluation (default: %(default)s)")  # fmt: skip
    start.add_argument("--export_forms", default=",".join(CHEAP_EXPORT_FORMS), metavar="FORMS",
                       help="forms built of each checkpoint in the background and served (`download --form`): "
                       "comma-separated bf16, int8, bert2bert, pruned, distilled, or none "
                       "(default: %(default)s)")  # fmt: skip
    start.set_defaults(func=_start)

    allow = sub.add_parser("allowlist", help="add, remove or list the volunteers of a private run")
    allow_sub = allow.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (
        ("add", "add a volunteer with a new secret key (printed once)"),
        ("remove", "remove a volunteer"),
        ("list", "list the volunteers"),
    ):
        a = allow_sub.add_parser(action, help=text)
        if action != "list":
            a.add_argument("name", help="volunteer name (letters, digits, _.@-)")
        a.add_argument("--file", default="allowlist.tsv", help="the allowlist file (default: ./allowlist.tsv)")
        if action == "add":
            a.add_argument("--url", default=None, help="coordinator URL to put in the printed join line")
    allow.set_defaults(func=_allowlist)

    status = sub.add_parser("status", help="print a running coordinator's progress, peers and checkpoints")
    status.add_argument("--url", required=True, help="http://HOST:PORT of the coordinator")
    status.add_argument("--timeout", type=float, default=10.0)
    status.set_defaults(func=_status)

    download = sub.add_parser(
        "download", help="download a checkpoint or one of its exports (resumable, sha256-verified)"
    )
    download.add_argument("--from", dest="source", required=True, help="http://HOST:PORT or grpc://HOST:PORT")
    download.add_argument("--out", required=True, help="directory to write the checkpoint into")
    download.add_argument("--checkpoint", default="latest", help="checkpoint name (default: the newest)")
    download.add_argument("--retries", type=int, default=3)
    download.add_argument("--timeout", type=float, default=60.0)
    download.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="fetch only files matching GLOB (repeatable), e.g. '*.json' 'model.safetensors'",
    )
    download.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                          help="skip files matching GLOB (repeatable), e.g. 'optimizer.*' 'generator/*'")  # fmt: skip
    download.add_argument("--form", default="", metavar="FORM",
                          help="download this export of the checkpoint instead (bf16, int8, bert2bert, pruned, "
                          "distilled; those the coordinator builds, see its --export_forms): the model in that form, "
                          "without the optimizer state (default: the checkpoint itself)")  # fmt: skip
    download.set_defaults(func=_download)

    export = sub.add_parser("export", help="write a deployable form of a checkpoint (bf16, int8, bert2bert, ...)")
    export.add_argument("src", metavar="SRC", help="a checkpoint dir or a `peer grow` output")
    export.add_argument("--form", required=True, help="bf16 | int8 | bert2bert | pruned | distilled")
    export.add_argument("--out", required=True, help="directory to write (must not exist or be empty)")
    export.add_argument("--fraction", type=float, default=0.25, help="pruned: share of attention heads to remove")
    export.add_argument("--steps", type=int, default=200, help="distilled: training steps of the student")
    export.add_argument("--student_layers", type=int, default=None,
                        help="distilled: the student's layers, evenly from the teacher's (default: half)")
    export.add_argument("-c", "--config", default=None, help="run config YAML: its corpus and objective (pruned, "
                        "distilled); default: the built-in defaults (the embedded corpus)")  # fmt: skip
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--batch_size", type=int, default=8, help="pruned, distilled: sequences per batch")
    export.add_argument(
        "--batches",
        type=int,
        default=8,
        help="pruned: batches the head importance averages over; distilled: held-out batches it is scored on",
    )
    export.set_defaults(func=_export)
    evaluate_cli.register(sub, export_runner=_evaluate_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
