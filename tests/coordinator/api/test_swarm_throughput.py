"""The swarm's samples/s, end to end: two real peers (``swarm_peer_proc.py``: real DHT, hivemind optimizer and
``train_loop``) train while the coordinator's real monitor, store and ``/metrics`` run, and a real Prometheus
scrapes them. The gauge ``warmswarm_samples_per_second`` must agree with what Prometheus itself computes from the
samples counter, ``rate(warmswarm_samples_total[W])``, over the same window: the issue saw it read 3x that rate."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import hivemind
import pytest
import torch
from hivemind.utils.crypto import RSAPrivateKey
from prometheus_proc import instant, running_prometheus

from coordinator.api.http import RunInfo, create_http_app, start_http_server
from coordinator.metrics import CoordinatorMetrics
from coordinator.monitor import Monitor, counting_validators
from coordinator.rates import DEFAULT_RATE_WINDOW
from coordinator.store import Store
from peer.children import Child, ProcessSet

pytestmark = pytest.mark.requires_tool("prometheus")

REPO = Path(__file__).resolve().parents[3]
PEER = REPO / "tests" / "peer" / "swarm" / "swarm_peer_proc.py"
RUN = "swarmtest"  # swarm_peer_proc's run
# seconds: the monitor's rate window, and Prometheus's range below. The product's own window, not a shorter one: the
# counter is credited in bursts (a peer's progress record every second or more, later under load), and a burst at
# one window's edge but not the other's moves the two rates apart by burst / window. With 30 s, CI saw 1.102 (twice,
# as the swarm slowed from 45 to 40 samples/s); the product chose 60 s for exactly this (coordinator.rates).
WINDOW = int(DEFAULT_RATE_WINDOW)
LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def start_peer(procs: ProcessSet, out: Path, initial: list[str], seed: int) -> Child:
    """A sync peer that trains until stopped: 0.1 s of "compute" per batch of 8, a global step every 128 samples
    (8 local steps each), then an averaging round of a few seconds in which no samples are made. Such uneven steps
    are what a per-step rate gets wrong."""
    out.mkdir()
    env = {
        "PYTHONPATH": str(REPO), "STEPS": "100000", "MIN_PEERS": "2", "TARGET": "128",
        "STEP_SLEEP": "0.1", "MATCHMAKING": "2", "PEER_SEED": str(seed), "LINGER": "0",
    }  # fmt: skip
    argv = [sys.executable, str(PEER), str(out), "sync", *initial]
    return procs.start(out.name, argv, env=env, cwd=REPO, log=out / "log.txt")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_samples_per_second_agrees_with_prometheus_rate_of_the_samples_counter(tmp_path):
    store = Store(tmp_path / "coordinator.db", alive_window=30)
    store.open_run(RUN, {"run_id": RUN})
    _, validators = counting_validators(RUN, RSAPrivateKey())
    dht = hivemind.DHT(host_maddrs=LOOPBACK, record_validators=validators, start=True)
    monitor = Monitor(dht, store, RUN, alive_window=30, interval=0.5, rate_window=WINDOW)
    stop = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stop,), daemon=True)
    thread.start()
    metrics = CoordinatorMetrics(store)
    http = start_http_server(create_http_app(store, tmp_path / "ckpts", RunInfo(RUN, {}), metrics), "127.0.0.1", 0)
    initial = [str(a) for a in dht.get_visible_maddrs()]
    outs = [tmp_path / f"peer{i}" for i in range(2)]
    procs = ProcessSet(tmp_path, grace=60)
    try:
        with running_prometheus(http.port, tmp_path) as prom:
            for i, out in enumerate(outs):
                start_peer(procs, out, initial, seed=i + 1)
            procs.wait_until(
                lambda: True if store.progress().alive_peers == 2 and store.progress().global_step >= 1 else None,
                180,
                "the peers took no global step",
                every=0.5,
            )
            time.sleep(WINDOW + 5)  # a full window of training, in the monitor's history and in Prometheus's
            rate = f"rate(warmswarm_samples_total[{WINDOW}s])"
            rates, ratios = [], []
            for _ in range(8):
                at = time.time() - 1.0  # both series of one evaluation instant, scraped by then
                r, ratio = instant(prom, rate, at), instant(prom, f"warmswarm_samples_per_second / {rate}", at)
                assert store.progress().alive_peers == 2, "a peer left during the measurement"
                if r is not None and ratio is not None:
                    rates.append(r)
                    ratios.append(ratio)
                time.sleep(2.0)
            summary = json.dumps({"rates": [round(r, 2) for r in rates], "ratios": [round(r, 3) for r in ratios]})
            print(summary)
            assert len(ratios) >= 6, summary
            assert min(rates) > 5.0, summary  # both peers were training throughout
            assert all(0.9 <= r <= 1.1 for r in ratios), summary
        # the counter itself is true: once the peers left, it holds every sample they trained, no more
        procs.close()  # SIGTERM: each peer leaves the swarm and writes its result
        trained = sum(torch.load(out / "result.pt")["samples"] for out in outs)
        deadline = time.monotonic() + 30
        while store.samples_total() != trained and time.monotonic() < deadline:
            time.sleep(0.5)
        assert store.samples_total() == trained
    finally:
        procs.close()
        stop.set()
        thread.join(30)
        http.stop()
        dht.shutdown()
        store.close()
