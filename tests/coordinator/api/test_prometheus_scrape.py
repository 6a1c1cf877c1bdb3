"""A real Prometheus (Debian's ``prometheus``) scrapes the coordinator's /metrics; values are read back through
Prometheus's HTTP query API, and ``promtool check metrics`` lints the exposition (naming, units, _total)."""

from __future__ import annotations

import subprocess

import httpx
import pytest
from prometheus_proc import query, running_prometheus

pytestmark = pytest.mark.requires_tool("prometheus")


@pytest.fixture
def prometheus(coordinator, tmp_path):
    with running_prometheus(coordinator.http.port, tmp_path) as base:
        yield base


def test_prometheus_scrapes_the_live_values(coordinator, prometheus):
    assert query(prometheus, "warmswarm_global_step", 445.0) == 445.0
    assert query(prometheus, 'warmswarm_rejected_records_total{reason="bad_signature"}', 3.0) == 3.0
    assert query(prometheus, "warmswarm_checkpoint_save_seconds_count", 2.0) == 2.0
    assert query(prometheus, "warmswarm_eval_step", 60.0) == 60.0
    assert query(prometheus, 'round(1000 * warmswarm_eval_score{task="lee",metric="spearman"})', 600.0) == 600.0
    # A new figure from the monitor shows up on the next scrape.
    coordinator.store.record_progress(450, 3, 300.0, 2.5)
    assert query(prometheus, "warmswarm_alive_peers", 3.0) == 3.0
    assert query(prometheus, 'up{job="warmswarm"}', 1.0) == 1.0


@pytest.mark.requires_tool("promtool")
def test_promtool_finds_no_naming_problems(coordinator):
    text = httpx.get(f"{coordinator.url}/metrics", timeout=10).text
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
