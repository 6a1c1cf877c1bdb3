"""Test-wide settings: everything runs offline and single-threaded enough for a 2-core machine; and the
``requires_tool`` marker, which makes a test that needs an external tool fail in CI (CI=true) when the tool is
missing instead of skipping, so CI cannot go green without its real-component tests (see system_tools.py)."""

import os
import signal

import pytest
from system_tools import in_ci, require_tool

from peer.shm_leftovers import remove_dead_processes_files

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, `kill`, a supervisor) stops the run the way Ctrl-C does: pytest then tears down the
    # fixtures still set up, and they stop the coordinators and peers they started. By default SIGTERM ends the
    # interpreter at once and those children, each in a session of its own, ran on (seen 2026-12-07: a killed
    # scenario run left a coordinator and a peer of its attack fixture running).
    signal.signal(signal.SIGTERM, _interrupt)
    remove_dead_processes_files()  # earlier runs' killed processes left them (peer.shm_leftovers)
    config.addinivalue_line(
        "markers",
        "requires_tool(*names): the test drives these commands of scripts/system-deps.txt; without one it fails "
        "under CI=true and skips with the reason elsewhere",
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # The tests kill peers on purpose (kill -9 scenarios, grace-period kills): what they left in /dev/shm is memory
    # (measured: 5.9 GB in 80 minutes of test runs), and a machine that runs the suite again would run out of it.
    remove_dead_processes_files()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Checked before the test's fixtures start, so a missing tool is reported as itself, not as a fixture's
    crash (e.g. Playwright failing to launch a browser that is not there)."""
    for mark in item.iter_markers("requires_tool"):
        for name in mark.args:
            require_tool(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    """Two things about skips. One for a missing tool is reported at the test that needs the tool (as pytest does for
    skipif marks), not at the one line of system_tools.py that raised it for every such test. And under CI=true a
    hand-written skip that sends the reader to scripts/system-deps.sh (a missing-tool skip that bypasses
    requires_tool) fails all the same, so that a copy of the old pattern cannot turn CI green by skipping."""
    report = yield
    if not report.skipped or hasattr(report, "wasxfail") or not isinstance(report.longrepr, tuple):
        return report
    path, _, reason = report.longrepr
    if path.endswith("system_tools.py"):
        filename, line = item.reportinfo()[:2]
        report.longrepr = (str(filename), (line or 0) + 1, reason)
    elif in_ci() and "system-deps.sh" in reason:
        report.outcome = "failed"
        report.longrepr = f"{reason.removeprefix('Skipped: ')} (CI=true: a missing tool fails; use requires_tool)"
    return report
