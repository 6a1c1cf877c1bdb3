"""The worker process of a background job of the coordinator (an evaluation, an export): started, waited for and,
when it fails, summed up in one line. The worker lowers itself to its ``nice`` value and thread count (its job file
says which); this side guarantees:

- the worker runs this coordinator's code (the directory this package was imported from goes first on its path,
  whatever an installed copy elsewhere holds), in a session of its own (a Ctrl-C in the coordinator's terminal is
  the coordinator's to handle), with no stdin and its stdout and stderr in a log file;
- a wait ends when the worker exits, when the stop event is set, or when the job's time is up; in the last two
  cases the worker is ended (SIGTERM, SIGKILL after ``STOP_GRACE_S``) and reaped before the wait returns.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

STOP_GRACE_S = 5.0
POLL_S = 0.5
REASON_CHARS = 300  # a failure's reason is cut to this, for a WARNING line and the store


class Outcome(enum.Enum):
    EXITED = "exited"  # on its own: its return code says how
    STOPPED = "stopped"  # the stop event was set: ended, not a failure
    TIMED_OUT = "timed out"  # ran past its time: ended


def start_worker(python: str, module: str, job_file: Path, log: Path) -> subprocess.Popen:
    """``python -m module job_file``, its output in ``log`` (truncated first)."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    with open(log, "wb") as log_file:
        return subprocess.Popen(
            [python, "-m", module, str(job_file)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip


def wait_worker(proc: subprocess.Popen, stop: threading.Event, started: float, timeout: float) -> Outcome:
    """Waits for ``proc`` until it exits, ``stop`` is set, or ``timeout`` seconds have passed since ``started``
    (``time.monotonic()``); ends it in the last two cases."""
    while proc.poll() is None:
        if stop.wait(POLL_S):
            end_worker(proc)
            return Outcome.STOPPED
        if time.monotonic() - started > timeout:
            end_worker(proc)
            return Outcome.TIMED_OUT
    return Outcome.EXITED


def end_worker(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after a grace period; reaps the process either way."""
    proc.terminate()
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def output_lines(log: Path) -> list[str]:
    """The worker's non-blank lines of output, stripped (none if its log is unreadable)."""
    try:
        return [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return []


def exit_reason(returncode: int, lines: list[str]) -> str:
    """Why a worker that exited on its own failed, in one line: the signal that ended it, or its exit code and the
    last of ``lines`` (the output its caller chose, e.g. its ``error:`` lines)."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    last = (lines or [""])[-1][:REASON_CHARS]
    return f"exited with code {returncode}" + (f": {last}" if last else "")
