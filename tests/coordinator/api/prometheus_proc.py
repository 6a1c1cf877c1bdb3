"""A real Prometheus (Debian's ``prometheus``) for the tests: started on a free loopback port, scraping one target
every second, read back through its HTTP query API, and always stopped (``peer.children``)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from peer.children import ProcessSet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_prometheus(target_port: int, workdir: Path) -> Iterator[str]:
    """Prometheus scraping ``127.0.0.1:target_port`` every second; yields its base URL."""
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: warmswarm\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    base = f"http://127.0.0.1:{port}"
    argv = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]  # fmt: skip
    with ProcessSet(workdir, grace=15) as procs:
        procs.start("prometheus", argv, ready=lambda _: ready(base), timeout=90)
        yield base


def ready(base: str) -> bool | None:
    """True once ``/-/ready`` answers: until its TSDB is open Prometheus listens but answers queries with a plain-text
    503 ("Service Unavailable"), which is not an answer to assert on."""
    try:
        return True if httpx.get(f"{base}/-/ready", timeout=5).status_code == 200 else None
    except httpx.TransportError:
        return None  # not listening yet


def instant(base: str, expr: str, at: float | None = None) -> float | None:
    """The value of an instant query with one series (evaluated at unix time ``at``, default now), None when it has
    none yet (or Prometheus was too slow)."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    try:
        resp = httpx.get(f"{base}/api/v1/query", params=params, timeout=5)
    except httpx.TransportError:
        return None  # a slow answer on a loaded machine: the caller asks again
    if resp.status_code != 200:
        return None
    body = resp.json()
    if body["status"] != "success" or not body["data"]["result"]:
        return None
    return float(body["data"]["result"][0]["value"][1])


def query(base: str, expr: str, want: float, timeout: float = 60.0) -> float:
    """Polls an instant query until it returns ``want`` (scrapes are asynchronous)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = instant(base, expr)
        if last == want:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{expr}: last value {last}, wanted {want}")
