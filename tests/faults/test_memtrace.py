"""The memory-trace diagnostic: a traced process writes snapshots, and the report names the line that grew."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.faultlib.memtrace import format_report, trace_report
from peer.memory import TRACE_ENV, TRACE_EVERY_ENV, start_memory_trace

REPO = Path(__file__).resolve().parents[2]

GROWER = """
import sys, time
from pathlib import Path
from peer.memory import start_memory_trace

kept = []

def grow():
    for _ in range(50):
        kept.append(bytearray(100_000))  # 5 MB held: the "leak"

first = start_memory_trace("grower")
grow()
out = first.parent
while not list(out.glob("grower-*-0002.tracemalloc")):  # a snapshot taken after the growth, whatever the timing
    time.sleep(0.05)
print(first)
"""


@pytest.mark.timeout(120)
def test_the_report_names_the_call_site_that_grew(tmp_path):
    script = tmp_path / "grower.py"
    script.write_text(GROWER)
    env = {TRACE_ENV: str(tmp_path / "trace"), TRACE_EVERY_ENV: "0.2", "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(script)], env=env, cwd=REPO, timeout=100, check=True, capture_output=True)
    (proc,) = trace_report(tmp_path / "trace")
    assert proc.role == "grower" and proc.snapshots >= 3
    top = proc.top[0]
    assert top.size_diff >= 5_000_000
    assert any("grower.py" in frame for frame in top.stack), top.stack
    assert "grower.py" in format_report([proc])


def test_no_trace_unless_asked_and_bad_settings_refused(tmp_path):
    assert start_memory_trace("x", environ={}) is None
    with pytest.raises(ValueError, match="must be > 0 seconds"):
        start_memory_trace("x", environ={TRACE_ENV: str(tmp_path), TRACE_EVERY_ENV: "0"})
    with pytest.raises(ValueError, match="no tracemalloc snapshots"):
        trace_report(tmp_path)


def test_the_cli_report_of_an_empty_directory_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/faults.py", "soak", "--trace_report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no tracemalloc snapshots" in done.stderr
