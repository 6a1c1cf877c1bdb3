"""A real Prometheus (Debian's ``prometheus``) scrapes the coordinator's /metrics; values are read back through
Prometheus's HTTP query API, and ``promtool check metrics`` lints the exposition (naming, units, _total)."""

from __future__ import annotations

import socket
import subprocess
import time

import httpx
import pytest

pytestmark = pytest.mark.requires_tool("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def prometheus(coordinator, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: warmswarm\n    static_configs: [{{targets: ['127.0.0.1:{coordinator.http.port}']}}]\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below, after the process
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, tmp_path / "prometheus.log")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def wait_ready(base: str, proc: subprocess.Popen, log_path, timeout: float = 90.0) -> None:
    """Waits for ``/-/ready``: until its TSDB is open Prometheus listens but answers queries with a plain-text 503
    ("Service Unavailable"), which is not an answer to assert on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"prometheus exited {proc.returncode}: {log_path.read_text()[-2000:]}"
        try:
            if httpx.get(f"{base}/-/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.25)
    raise AssertionError(f"prometheus not ready after {timeout:.0f} s: {log_path.read_text()[-2000:]}")


def query(base: str, expr: str, want: float, timeout: float = 60.0) -> float:
    """Polls an instant query until it returns ``want`` (scrapes are asynchronous)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=5)
        except httpx.TransportError:
            resp = None  # a slow answer on a loaded machine: ask again
        if resp is not None and resp.status_code == 200:
            r = resp.json()
            if r["status"] == "success" and r["data"]["result"]:
                last = float(r["data"]["result"][0]["value"][1])
                if last == want:
                    return last
        elif resp is not None:
            last = f"HTTP {resp.status_code}: {resp.text[:80]}"
        time.sleep(0.5)
    raise AssertionError(f"{expr}: last value {last}, wanted {want}")


def test_prometheus_scrapes_the_live_values(coordinator, prometheus):
    assert query(prometheus, "warmswarm_global_step", 445.0) == 445.0
    assert query(prometheus, 'warmswarm_rejected_records_total{reason="bad_signature"}', 3.0) == 3.0
    assert query(prometheus, "warmswarm_checkpoint_save_seconds_count", 2.0) == 2.0
    # A new figure from the monitor shows up on the next scrape.
    coordinator.store.record_progress(450, 3, 300.0, 2.5)
    assert query(prometheus, "warmswarm_alive_peers", 3.0) == 3.0
    assert query(prometheus, 'up{job="warmswarm"}', 1.0) == 1.0


@pytest.mark.requires_tool("promtool")
def test_promtool_finds_no_naming_problems(coordinator):
    text = httpx.get(f"{coordinator.url}/metrics", timeout=10).text
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
