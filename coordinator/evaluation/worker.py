"""``python -m coordinator.evaluation.worker JOB``: one background evaluation of a checkpoint, in a process of its
own, started by the coordinator (``coordinator.evaluator``).

Why a separate OS process rather than a thread: fine-tuning holds the GIL and a torch thread pool for minutes, and
the coordinator's HTTP, gRPC, monitor and checkpoint pulls must not wait on it; a process can also be lowered to
``nice`` 19 and one torch thread, and its crash (an OOM kill, a bug) cannot take the coordinator down. It watches
its parent and exits when the coordinator is gone (``peer.lifetime``: no process outlives the one that started it).

The job file (JSON, ``EvaluationJob``) names the checkpoint, the settings and where to write the report; the report
is written to ``out`` atomically (a ``.tmp`` renamed into place), so the coordinator never reads half a report.
Exit codes: 0 done, 2 bad input (one ``error:`` line on stderr), anything else a crash.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from coordinator.deployment import EvaluationSettings
from peer.errors import UserError

logger = logging.getLogger("coordinator.evaluation.worker")  # also when run as __main__


@dataclass
class EvaluationJob:
    """What one worker is asked to do; ``run_config`` is the run's config as a dict (``peer.config``)."""

    checkpoint: str
    out: str
    parent_pid: int
    settings: EvaluationSettings
    run_config: dict

    def to_json(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> EvaluationJob:
        try:
            data = json.loads(Path(path).read_text())
            settings = data.pop("settings")
            return cls(**data, settings=EvaluationSettings(**{**settings, "tasks": tuple(settings["tasks"])}))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"unreadable evaluation job {path}: {e}") from None


def evaluation_spec(settings: EvaluationSettings, run_config: dict, positions: int | None = None):
    """The ``EvaluationSpec`` of the background settings: the checkpoint alone, no references; texts cut to the
    checkpoint's ``positions`` where the settings ask for more (a small model must not fail every evaluation for a
    budget sized for the demo's)."""
    from coordinator.evaluation.spec import EvaluationSpec, FinetuneBudget
    from coordinator.evaluation.tasks import DEFAULT_TASKS
    from peer.config import config_from_dict

    budget = FinetuneBudget(
        steps=settings.steps,
        batch_size=settings.batch_size,
        max_length=min(settings.max_length, positions or settings.max_length),
        train_layers=settings.train_layers,
    )
    return EvaluationSpec(
        tasks=tuple(settings.tasks) or DEFAULT_TASKS,
        seeds=settings.seeds,
        budget=budget,
        references=(),
        run_config=config_from_dict(run_config),
        heldout_batches=settings.heldout_batches,
    )


def _run(args: argparse.Namespace) -> int:
    from peer.lifetime import start_parent_watch

    job = EvaluationJob.from_json(args.job)
    start_parent_watch(job.parent_pid)
    os.nice(job.settings.niceness)
    spec = evaluation_spec(job.settings, job.run_config, _positions(Path(job.checkpoint)))
    spec.check()
    import torch

    torch.set_num_threads(max(1, job.settings.threads))
    from coordinator.evaluation.run import evaluate_checkpoint

    report = evaluate_checkpoint(job.checkpoint, spec, progress=logger.info)
    out = Path(job.out)
    tmp = out.with_name(out.name + ".tmp")
    report.to_json(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    logger.info("evaluated %s in %.0f s", job.checkpoint, report.seconds)
    return 0


def _positions(checkpoint: Path) -> int | None:
    """The checkpoint's ``max_position_embeddings`` (None if unreadable: loading it says why, in one line)."""
    try:
        return int(json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: list[str] | None = None) -> int:
    from peer.entry import run_cli

    prog = "python -m coordinator.evaluation.worker"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("job", metavar="JOB", help="the job file the coordinator wrote")
    parser.set_defaults(func=_run)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
