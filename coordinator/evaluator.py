"""The coordinator's background evaluation: every checkpoint it saves is evaluated (``coordinator.evaluation``) in a
low-priority process of its own, one at a time, and the scores go to the store, whence the JSON API, ``/metrics``,
gRPC and the dashboard read them, and to ``evaluation.json`` in the checkpoint's directory.

What it guarantees:

- Training and serving never wait on it: the work runs in a separate OS process (``coordinator.evaluation.worker``)
  at ``nice`` +19 with one torch thread; this thread only starts it, polls it and records its report.
- Newest first: when checkpoints arrive faster than they are evaluated, the newest pending one is next, and the
  older ones are evaluated only while nothing newer waits (if they are still on disk by then).
- Restarts: what is done is in the store (``evaluation_attempts``), so a restarted coordinator evaluates the
  checkpoints still pending and never redoes a finished one. A report that reached ``evaluation.json`` but not the
  store (a crash in between) is read back, not recomputed.
- Failures: a worker that crashes, is killed or times out is one WARNING line (its last line of output), counted in
  the store and retried up to ``max_attempts`` times over restarts, then given up; none of it reaches the
  coordinator's other threads. A worker stopped because the coordinator stops is not a failure.

``evaluation.json`` sits next to the checkpoint's verified files, not among them: the manifest (and so every
download's sha256 check) covers what the checkpoint was when saved, and the evaluation, which comes minutes later,
must not rewrite it. Its served model card with the scores (``model-index``) is built on request from both
(``coordinator.api``).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from coordinator.deployment import EvaluationSettings
from coordinator.evaluation.results import EVALUATION_FILE, EvaluationReport, read_side_file
from coordinator.evaluation.worker import EvaluationJob
from coordinator.store import CheckpointRow, EvaluationScore, Store
from coordinator.worker_process import Outcome, exit_reason, output_lines, start_worker, wait_worker
from peer.errors import UserError

logger = logging.getLogger(__name__)

HELDOUT_TASK = "heldout"


def report_scores(report: EvaluationReport, checkpoint: str, step: int) -> list[EvaluationScore]:
    """The store's rows of a report: each model's each task metric (the headline and the others, e.g. Pearson
    beside Spearman) over its seeds, and each held-out metric as task ``heldout``."""
    rows = []
    for model in report.models:
        for key, value in model.heldout.items():
            rows.append(EvaluationScore(checkpoint, step, model.role, HELDOUT_TASK, key, value, 0.0, [], [value]))
        for task in model.tasks:
            rows.append(EvaluationScore(checkpoint, step, model.role, task.task, task.metric, task.mean, task.sd,
                                        list(task.seeds), list(task.scores)))  # fmt: skip
            for metric, scores in task.other.items():
                sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
                rows.append(EvaluationScore(checkpoint, step, model.role, task.task, metric,
                                            statistics.fmean(scores), sd, list(task.seeds), list(scores)))  # fmt: skip
    return rows


def _one_line(log: Path, returncode: int) -> str:
    """Why a worker failed, in one line: its last ``error:`` line or other output, or the signal that ended it."""
    lines = output_lines(log)
    return exit_reason(returncode, [line for line in lines if line.startswith("error:")] or lines)


class BackgroundEvaluator:
    """Evaluates the store's checkpoints one at a time until stopped (``run`` in a thread of its own).

    ``checkpoints_dir`` is where the checkpoints live, ``work_dir`` where job files, reports in progress and the
    logs of failed workers go, ``run_config`` the run's config as a dict (the held-out split and objective)."""

    def __init__(
        self,
        settings: EvaluationSettings,
        store: Store,
        checkpoints_dir: Path,
        work_dir: Path,
        run_config: dict,
        python: str = sys.executable,
    ):
        self.settings, self.store, self.run_config, self.python = settings, store, run_config, python
        self.checkpoints_dir, self.work_dir = Path(checkpoints_dir), Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.worker_pid: int | None = None  # the running worker's pid, None between evaluations

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                row = self.next_checkpoint()
                if row is not None and self.evaluate(row, stop):
                    continue  # at once to the next one; after a failure, a pause first
            except Exception:  # a bug here must not end the thread: the next pass tries again
                logger.exception("background evaluation failed; will retry")
            stop.wait(self.settings.poll_interval)

    def next_checkpoint(self) -> CheckpointRow | None:
        """The newest checkpoint neither evaluated nor given up; those with an ``evaluation.json`` the store lacks
        are recorded from it on the way."""
        attempts = self.store.evaluation_attempts()
        pending = []
        for row in self.store.checkpoints():
            seen = attempts.get(row.name)
            if seen is not None and (seen.done or seen.attempts >= self.settings.max_attempts):
                continue
            report = read_side_file(self.checkpoints_dir / row.name)
            if report is not None:
                self._record(row, report)
                logger.info("recorded the evaluation of %s from its %s", row.name, EVALUATION_FILE)
                continue
            pending.append(row)
        return max(pending, key=lambda r: r.step, default=None)

    def evaluate(self, row: CheckpointRow, stop: threading.Event) -> bool:
        """Runs one worker on ``row`` and records what it produced; False if it failed or ``stop`` ended it."""
        out = self.work_dir / f"{row.name}.json"
        log = self.work_dir / f"{row.name}.log"
        job_file = self.work_dir / f"{row.name}.job.json"
        out.unlink(missing_ok=True)
        EvaluationJob(str(self.checkpoints_dir / row.name), str(out), os.getpid(), self.settings, self.run_config)\
            .to_json(job_file)  # fmt: skip
        started = time.monotonic()
        proc = start_worker(self.python, "coordinator.evaluation.worker", job_file, log)
        self.worker_pid = proc.pid
        logger.info("evaluation worker of %s is pid %d (nice +%d)", row.name, proc.pid, self.settings.niceness)
        try:
            outcome = wait_worker(proc, stop, started, self.settings.timeout)
        finally:
            self.worker_pid = None
        if outcome is Outcome.STOPPED:
            logger.info("stopping: abandoned the evaluation of %s", row.name)
            return False
        timed_out = outcome is Outcome.TIMED_OUT
        job_file.unlink(missing_ok=True)
        if proc.returncode == 0 and not timed_out:
            try:
                report = EvaluationReport.from_json(out)
            except UserError as e:
                return self._failed(row, f"its report is unreadable: {e}")
            self._write_side_file(row, out)
            self._record(row, report)
            log.unlink(missing_ok=True)  # a failed worker's log stays, for whoever reads the WARNING line
            logger.info("evaluated %s (step %d) in %.0f s", row.name, row.step, time.monotonic() - started)
            return True
        if stop.is_set():  # it ended as the coordinator stops: the next start evaluates it
            return False
        if not (self.checkpoints_dir / row.name).is_dir():  # pruned under the worker: nothing to retry, no failure
            logger.info("%s was pruned during its evaluation", row.name)
            return False
        error = f"timed out after {self.settings.timeout:.0f} s" if timed_out else _one_line(log, proc.returncode)
        return self._failed(row, error)

    def _failed(self, row: CheckpointRow, error: str) -> bool:
        attempts = self.store.record_evaluation_failure(row.name, row.step, error)
        last = attempts >= self.settings.max_attempts
        logger.warning(
            "evaluation of %s failed (attempt %d of %d): %s; %s", row.name, attempts, self.settings.max_attempts,
            error, "giving up on it" if last else "will retry",
        )  # fmt: skip
        return False

    def _write_side_file(self, row: CheckpointRow, report_path: Path) -> None:
        """Moves the report next to the checkpoint's files (atomically); a checkpoint pruned meanwhile keeps its
        scores in the store only."""
        target = self.checkpoints_dir / row.name / EVALUATION_FILE
        try:
            os.replace(report_path, target)
            fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:
            logger.info("%s was pruned before its evaluation finished; its scores are in the store", row.name)
        except OSError as e:
            logger.warning("could not write %s: %s", target, e.strerror)

    def _record(self, row: CheckpointRow, report: EvaluationReport) -> None:
        self.store.record_evaluation(row.name, row.step, report_scores(report, row.name, row.step), report.seconds)
