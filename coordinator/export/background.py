"""The coordinator's background exports: the forms ``ExportSettings.forms`` names (default bf16 and int8) are built
of every checkpoint in a low-priority process of its own (``coordinator.export.worker``), one checkpoint at a time,
and served beside it (``coordinator.exports``, ``coordinator.api``).

What it guarantees, as the background evaluation (``coordinator.evaluator``) does:

- Training and serving never wait on it: the work is a separate OS process at ``nice`` +19 with one torch thread,
  never inside a checkpoint's save; this thread only starts it and waits for it.
- Newest first: of the checkpoints with forms still to build, the newest is next.
- Restarts: what is built is on disk (``<ckpt>/exports/<form>/`` with its manifest), and so are failures
  (``<form>.failed.json``), so a restarted coordinator builds what is missing and never redoes a finished form.
- Failures: a form that fails, a worker that crashes, is killed or times out is one WARNING line per form, counted and
  retried up to ``max_attempts`` times, then given up. A worker stopped because the coordinator stops is no failure.
  Each form built and each failure is also counted in the store, for the run (``warmswarm_exports_built_total``,
  ``warmswarm_export_failures_total``): the on-disk records go with their checkpoint, an operator's alert must not.
- A crash at any moment leaves no half export served: the worker builds in a staging dir (emptied before each job)
  and publishes each form with one rename.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from coordinator.checkpoints import CheckpointDir
from coordinator.deployment import ExportSettings
from coordinator.export.worker import ExportJob
from coordinator.exports import failures, list_exports, record_failure
from coordinator.store import CheckpointRow, Store
from coordinator.worker_process import REASON_CHARS, Outcome, exit_reason, output_lines, start_worker, wait_worker

logger = logging.getLogger(__name__)

STAGING = "staging"


class BackgroundExporter:
    """Builds ``settings.forms`` of the checkpoints in ``ckpts`` until stopped (``run`` in a thread of its own).
    ``work_dir`` (on the checkpoints' filesystem: a form is published by a rename) holds the staging dir, job files
    and the logs of failed workers; ``run_config`` is the run's config as a dict."""

    def __init__(
        self,
        settings: ExportSettings,
        ckpts: CheckpointDir,
        work_dir: Path,
        run_config: dict,
        store: Store,
        python: str = sys.executable,
    ):
        self.settings, self.ckpts, self.run_config, self.python = settings, ckpts, run_config, python
        self.store = store  # counts each form's builds and failures (warmswarm_exports_built_total, ...)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.worker_pid: int | None = None  # the running worker's pid, None between jobs

    def run(self, stop: threading.Event) -> None:
        # Zero counts first: Prometheus's increase() cannot see a counter's first increment if it is also its first
        # sample, and the failing-exports alert counts from the first failure.
        self.store.declare_export_forms(self.settings.forms)
        while not stop.is_set():
            try:
                job = self.next_job()
                if job is not None and self.build(*job, stop):
                    continue  # at once to the next one; after a failure, a pause first
            except Exception:  # a bug here must not end the thread: the next pass tries again
                logger.exception("background export failed; will retry")
            stop.wait(self.settings.poll_interval)

    def pending(self, row: CheckpointRow) -> list[str]:
        """The forms of ``row`` neither built nor given up."""
        ckpt = self.ckpts.path(row.name)
        built, failed = list_exports(ckpt), failures(ckpt)
        return [f for f in self.settings.forms if f not in built and
                (f not in failed or failed[f].attempts < self.settings.max_attempts)]  # fmt: skip

    def next_job(self) -> tuple[CheckpointRow, list[str]] | None:
        """The newest checkpoint with forms to build, and those forms."""
        for row in reversed(self.ckpts.list()):
            forms = self.pending(row)
            if forms:
                return row, forms
        return None

    def build(self, row: CheckpointRow, forms: list[str], stop: threading.Event) -> bool:
        """Runs one worker on ``row``'s ``forms``; False if any failed or ``stop`` ended it."""
        ckpt = self.ckpts.path(row.name)
        staging = self.work_dir / STAGING
        shutil.rmtree(staging, ignore_errors=True)  # what a killed worker left: never published, never served
        log = self.work_dir / f"{row.name}.log"
        job_file = self.work_dir / f"{row.name}.job.json"
        ExportJob(str(ckpt), tuple(forms), str(staging), os.getpid(), self.settings, self.run_config)\
            .to_json(job_file)  # fmt: skip
        started = time.monotonic()
        proc = start_worker(self.python, "coordinator.export.worker", job_file, log)
        self.worker_pid = proc.pid
        logger.info("export worker of %s (%s) is pid %d (nice +%d)", row.name, ", ".join(forms), proc.pid,
                    self.settings.niceness)  # fmt: skip
        try:
            outcome = wait_worker(proc, stop, started, self.settings.timeout)
        finally:
            self.worker_pid = None
        if outcome is Outcome.STOPPED:
            logger.info("stopping: abandoned the exports of %s", row.name)
            return False
        timed_out = outcome is Outcome.TIMED_OUT
        job_file.unlink(missing_ok=True)
        if stop.is_set():  # it ended as the coordinator stops: the next start builds what is missing
            return False
        if not ckpt.is_dir():  # pruned under the worker: nothing to retry, no failure
            logger.info("%s was pruned during its exports", row.name)
            return False
        built = list_exports(ckpt)
        missing = [f for f in forms if f not in built]
        self.store.count_export_builds([f for f in forms if f in built], missing)
        if not missing:
            log.unlink(missing_ok=True)  # a failed worker's log stays, for whoever reads the WARNING line
            logger.info("exported %s (step %d) as %s in %.0f s", row.name, row.step, ", ".join(forms),
                        time.monotonic() - started)  # fmt: skip
            return True
        for form in missing:
            error = f"timed out after {self.settings.timeout:.0f} s" if timed_out else _why(log, proc.returncode, form)
            attempts = record_failure(ckpt, form, error)
            last = attempts >= self.settings.max_attempts
            logger.warning("%s export of %s failed (attempt %d of %d): %s; %s (log: %s)", form, row.name, attempts,
                           self.settings.max_attempts, error, "giving up on it" if last else "will retry",
                           log)  # fmt: skip
        return False


def _why(log: Path, returncode: int, form: str) -> str:
    """Why ``form`` was not built, in one line: the worker's ``error: <form>:`` line, else its last line of output
    or the signal that ended it."""
    lines = output_lines(log)
    prefix = f"error: {form}: "
    mine = [line.removeprefix(prefix) for line in lines if line.startswith(prefix)]
    if mine and returncode >= 0:
        return mine[-1][:REASON_CHARS]
    return exit_reason(returncode, lines)
