"""The worker process of the coordinator's background jobs (``coordinator.worker_process``): started in a session of
its own with its output in a log, waited for until it exits, is stopped or runs out of time, and summed up in one
line when it fails."""

import signal
import sys
import threading
import time

import pytest

from coordinator.worker_process import Outcome, exit_reason, output_lines, start_worker, wait_worker

WORKER = """
import os, sys, time
job = open(sys.argv[1]).read()
print("session", os.getsid(0) == os.getpid(), flush=True)
if job == "fail":
    print("error: bad job", file=sys.stderr, flush=True)
    sys.exit(2)
time.sleep(60)
"""


@pytest.fixture
def worker(tmp_path, monkeypatch):
    """Starts the test's worker module on a job (its text); returns the process and its log."""
    (tmp_path / "fake_worker.py").write_text(WORKER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    started = []

    def start(job: str):
        job_file, log = tmp_path / "job.txt", tmp_path / "worker.log"
        job_file.write_text(job)
        proc = start_worker(sys.executable, "fake_worker", job_file, log)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_worker_that_exits_is_waited_for_and_its_error_line_is_the_reason(worker):
    proc, log = worker("fail")
    assert wait_worker(proc, threading.Event(), time.monotonic(), timeout=60) is Outcome.EXITED
    assert proc.returncode == 2
    assert output_lines(log) == ["session True", "error: bad job"]  # stdout and stderr, in a session of its own
    assert exit_reason(proc.returncode, output_lines(log)) == "exited with code 2: error: bad job"


def test_a_stop_ends_the_worker_at_once(worker):
    proc, _ = worker("sleep")
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    began = time.monotonic()
    assert wait_worker(proc, stop, began, timeout=60) is Outcome.STOPPED
    assert proc.returncode == -signal.SIGTERM and time.monotonic() - began < 10


def test_a_worker_past_its_time_is_ended(worker):
    proc, _ = worker("sleep")
    began = time.monotonic()
    assert wait_worker(proc, threading.Event(), began, timeout=1.0) is Outcome.TIMED_OUT
    assert proc.returncode == -signal.SIGTERM and 1.0 < time.monotonic() - began < 10


def test_exit_reasons():
    assert exit_reason(-signal.SIGKILL, ["error: ignored"]) == "killed by SIGKILL"
    assert exit_reason(-200, []) == "killed by signal 200"
    assert exit_reason(1, []) == "exited with code 1"
    assert exit_reason(1, ["first", "x" * 400]) == "exited with code 1: " + "x" * 300


def test_an_unreadable_log_has_no_lines(tmp_path):
    assert output_lines(tmp_path / "missing.log") == []
