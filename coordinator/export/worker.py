"""``python -m coordinator.export.worker JOB``: builds the pending export forms of one checkpoint, in a process of
its own, started by the coordinator's background exporter (``coordinator.export.background``).

Why a process: as for the evaluation worker, an export holds the GIL and torch threads (the distilled form trains
for minutes), and the coordinator's servers and checkpoint pulls must not wait on it; the process runs at ``nice`` 19
with one torch thread, and exits when the coordinator is gone (``peer.lifetime``).

Each form is written into the job's staging dir (``export()``: a temp dir renamed whole, with its model card), made
durable with its manifest (``coordinator.exports.stage``), then moved into the checkpoint's ``exports/`` in one
rename (``publish``): a kill at any moment leaves nothing half-built where it is listed or served. A form that fails
is one ``error: <form>: <why>`` line on stderr and the others are still built. Exit codes: 0 every form built,
1 some failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.deployment import ExportSettings
from peer.errors import UserError

logger = logging.getLogger("coordinator.export.worker")  # also when run as __main__


@dataclass
class ExportJob:
    """What one worker is asked to do. ``run_config`` is the run's config as a dict (the corpus of pruned and
    distilled, the data named in the cards); ``staging`` a directory of its own that the worker may fill."""

    checkpoint: str
    forms: tuple[str, ...]
    staging: str
    parent_pid: int
    settings: ExportSettings
    run_config: dict

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> ExportJob:
        try:
            data = json.loads(Path(path).read_text())
            settings = data.pop("settings")
            forms = tuple(data.pop("forms"))
            return cls(**data, forms=forms, settings=ExportSettings(**{**settings, "forms": tuple(settings["forms"])}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"unreadable export job {path}: {e}") from None


def build_form(job: ExportJob, form: str, config_path: str | None, data) -> bool:
    """Builds and publishes one form; False if the checkpoint was pruned meanwhile."""
    from coordinator.export.build import ExportOptions, export
    from coordinator.export.card import write_export_card
    from coordinator.exports import publish, stage
    from peer.run.checkpoint_layout import parse_step

    ckpt = Path(job.checkpoint)
    staged = Path(job.staging) / form
    shutil.rmtree(staged, ignore_errors=True)
    options = ExportOptions(form=form, fraction=job.settings.fraction, steps=job.settings.steps, config=config_path)
    note = export(ckpt, options, staged, write_card=lambda tmp, n: write_export_card(tmp, n, data))
    stage(staged, note.source.step if note.source.step is not None else parse_step(ckpt.name) or 0, form)
    if not publish(staged, ckpt, form):
        shutil.rmtree(staged, ignore_errors=True)
        return False
    logger.info("built the %s export of %s in %.1f s", form, ckpt.name, note.seconds)
    return True


def _run(args: argparse.Namespace) -> int:
    from peer.lifetime import start_parent_watch

    job = ExportJob.from_json(args.job)
    start_parent_watch(job.parent_pid)
    os.nice(job.settings.niceness)
    import torch
    import yaml

    from peer.config import config_from_dict

    torch.set_num_threads(max(1, job.settings.threads))
    Path(job.staging).mkdir(parents=True, exist_ok=True)
    config_path, data = None, None
    if job.run_config:
        config_path = str(Path(job.staging) / "run.yaml")
        Path(config_path).write_text(yaml.safe_dump(job.run_config))
        data = config_from_dict(job.run_config).data
    failed = 0
    for form in job.forms:
        try:
            if not build_form(job, form, config_path, data):
                return 0  # pruned: nothing more to build for it
        except UserError as e:
            print(f"error: {form}: {str(e).splitlines()[0]}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    from peer.entry import run_cli

    parser = argparse.ArgumentParser(prog="python -m coordinator.export.worker", description=__doc__.splitlines()[0])
    parser.add_argument("job", metavar="JOB", help="the job file the coordinator wrote")
    parser.set_defaults(func=_run)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
