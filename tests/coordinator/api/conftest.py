"""Fixtures for the coordinator API tests: a real SQLite store with a run's history, a checkpoints directory laid
out as the saver writes it, and the HTTP + gRPC servers on OS-chosen loopback ports."""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.api.grpc_server import GrpcServer, start_grpc_server
from coordinator.api.http import HttpServer, RunInfo, create_http_app, start_http_server
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import CheckpointRow, FileEntry, PeerObservation, Store

RUN_ID = "api-test-run"
T0 = 1_700_000_000.0


def write_checkpoint(root: Path, step: int, files: dict[str, bytes], manifest: bool = True) -> Path:
    """Lays out ``ckpt-<step>/`` with ``files`` and (unless told not to) a manifest written last."""
    d = root / f"ckpt-{step:06d}"
    for rel, data in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_bytes(data)
    if manifest:
        entries = [{"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                   for rel, data in sorted(files.items())]  # fmt: skip
        (d / "manifest.json").write_text(json.dumps({"files": entries, "step": step}))
    return d


def checkpoint_payload(seed: int, big_bytes: int = 3 << 20) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {
        "model.safetensors": rng.randbytes(big_bytes),
        "config.json": json.dumps({"hidden_size": 64, "seed": seed}).encode(),
        "generator/config.json": json.dumps({"hidden_size": 16}).encode(),
        "training_state.json": json.dumps({"step": seed, "samples": 1000 * seed, "run_id": RUN_ID}).encode(),
    }


def populate_store(store: Store, now: float, points: int = 90, peers: int = 4) -> None:
    """A plausible run: a falling loss, a swarm that grows from 1 to ``peers``, samples/s that follow it."""
    store.open_run(RUN_ID, {"run_id": RUN_ID}, total_steps=2000, now=now - points * 10 - 5)
    names = ["alice-4090", "bob-a100", "carol-laptop", "dave-h100", "erin", "frank"]
    totals = [0] * peers
    for i in range(points):
        t = now - (points - i) * 10
        alive = min(peers, 1 + i * peers // max(1, points // 2))
        for p in range(alive):
            totals[p] += 40 * (p + 1) * 10
            store.observe_peer(PeerObservation(f"{p:02x}" * 16, names[p % len(names)], i * 5, totals[p],
                                               40.0 * (p + 1), 2.0 + 6.0 * math.exp(-i / 25), t))  # fmt: skip
        sps = sum(40.0 * (p + 1) for p in range(alive))
        store.record_progress(i * 5, alive, sps, 2.0 + 6.0 * math.exp(-i / 25) + 0.1 * math.sin(i), now=t)
    store.add_rejected({"bad_signature": 3, "malformed": 1})


@dataclass
class Coordinator:
    store: Store
    checkpoints_dir: Path
    metrics: CoordinatorMetrics
    http: HttpServer
    grpc: GrpcServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc.port}"


@pytest.fixture
def checkpoints_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data" / "checkpoints"
    write_checkpoint(root, 60, checkpoint_payload(60, big_bytes=1 << 20))
    write_checkpoint(root, 120, checkpoint_payload(120))
    (root / "ckpt-000180.tmp").mkdir()  # a save in progress: never listed or served
    write_checkpoint(root, 240, checkpoint_payload(240), manifest=False)  # renamed but no manifest: not visible
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    import time

    s = Store(tmp_path / "data" / "coordinator.db", alive_window=60.0)
    populate_store(s, time.time())
    for step, secs in ((60, 0.8), (120, 1.7)):
        s.record_checkpoint(CheckpointRow(f"ckpt-{step:06d}", step, time.time(), [FileEntry("config.json", 1, "0")],
                                          save_seconds=secs))  # fmt: skip
    yield s
    s.close()


@pytest.fixture
def coordinator(store: Store, checkpoints_dir: Path) -> Iterator[Coordinator]:
    metrics = CoordinatorMetrics(store)
    info = RunInfo(RUN_ID, {"run_id": RUN_ID}, ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"], "python -m peer join ...")
    http = start_http_server(create_http_app(store, checkpoints_dir, info, metrics), "127.0.0.1", 0)
    grpc_server = start_grpc_server(store, checkpoints_dir, "127.0.0.1", 0, metrics=metrics)
    try:
        yield Coordinator(store, checkpoints_dir, metrics, http, grpc_server)
    finally:
        grpc_server.stop(0)
        http.stop()
