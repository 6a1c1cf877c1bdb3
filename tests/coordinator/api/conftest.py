"""Fixtures for the coordinator API tests: a real SQLite store with a run's history, a checkpoints directory laid
out as the saver writes it, and the HTTP + gRPC servers on OS-chosen loopback ports."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from api_fixtures import (
    GROWING_CHECKPOINTS,
    RUN_ID,
    checkpoint_payload,
    evaluation_report,
    export_payload,
    populate_crowded_store,
    populate_evaluations,
    populate_growing_store,
    populate_store,
    write_checkpoint,
    write_crowded_checkpoints,
    write_export,
)

from coordinator.api.grpc_server import GrpcServer, start_grpc_server
from coordinator.api.http import HttpServer, RunInfo, create_http_app, start_http_server
from coordinator.evaluator import report_scores
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import CheckpointRow, Store
from peer.run.checkpoint_manifest import FileDigest


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
    ckpt = write_checkpoint(root, 120, checkpoint_payload(120))
    for form, size in (("bf16", 3 << 19), ("int8", 3 << 18)):  # half and a quarter of the weights
        write_export(ckpt, form, export_payload(form, 120, size))
    (root / "ckpt-000180.tmp").mkdir()  # a save in progress: never listed or served
    write_checkpoint(root, 240, checkpoint_payload(240), manifest=False)  # renamed but no manifest: not visible
    return root


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    import time

    s = Store(tmp_path / "data" / "coordinator.db", alive_window=60.0)
    populate_store(s, time.time())
    for step, secs in ((60, 0.8), (120, 1.7)):
        s.record_checkpoint(CheckpointRow(f"ckpt-{step:06d}", step, time.time(), [FileDigest("config.json", 1, "0")],
                                          save_seconds=secs))  # fmt: skip
    yield s
    s.close()


@pytest.fixture
def coordinator(store: Store, checkpoints_dir: Path) -> Iterator[Coordinator]:
    populate_evaluations(store, checkpoints_dir)
    metrics = CoordinatorMetrics(store)
    info = RunInfo(
        RUN_ID,
        {"run_id": RUN_ID},
        ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"],
        "python -m peer join --coordinator http://127.0.0.1:8080",
    )
    http = start_http_server(create_http_app(store, checkpoints_dir, info, metrics), "127.0.0.1", 0)
    grpc_server = start_grpc_server(store, checkpoints_dir, "127.0.0.1", 0, metrics=metrics)
    try:
        yield Coordinator(store, checkpoints_dir, metrics, http, grpc_server)
    finally:
        grpc_server.stop(0)
        http.stop()


# As coordinator.serving builds it for a private run behind a long public host name (the line must wrap, not widen the
# page).
JOIN_COMMAND = (
    "python -m peer join --coordinator http://warmswarm-coordinator.compute.example-university.edu:8080 "
    "--auth_key NAME:KEY"
)


@dataclass
class CrowdedCoordinator:
    """An HTTP-only coordinator whose store and checkpoints hold the crowded run (``populate_crowded_store``)."""

    store: Store
    checkpoints_dir: Path
    http: HttpServer
    now: float
    join_command: str = JOIN_COMMAND

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"


@pytest.fixture
def crowded(tmp_path: Path) -> Iterator[CrowdedCoordinator]:
    import time

    now = time.time()
    store = Store(tmp_path / "crowded" / "coordinator.db", alive_window=60.0)
    populate_crowded_store(store, now)
    root = tmp_path / "crowded" / "checkpoints"
    for i, ckpt in enumerate(write_crowded_checkpoints(root)):  # the scores column and chart filled too
        step = int(ckpt.name.split("-")[1])
        for form in ("bert2bert", "bf16", "distilled", "int8", "pruned"):  # every form: the widest exports cell
            write_export(ckpt, form, export_payload(form, step, 1024))
        report = evaluation_report(step, i / 5)
        store.record_evaluation(ckpt.name, step, report_scores(report, ckpt.name, step), report.seconds)
    info = RunInfo(RUN_ID, {"run_id": RUN_ID}, ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"], JOIN_COMMAND)
    http = start_http_server(create_http_app(store, root, info), "127.0.0.1", 0)
    try:
        yield CrowdedCoordinator(store, root, http, now)
    finally:
        http.stop()
        store.close()


@dataclass
class GrowingCoordinator:
    """An HTTP-only coordinator of a run that grew mid-run (``populate_growing_store``)."""

    store: Store
    http: HttpServer
    now: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"


@pytest.fixture
def growing(tmp_path: Path) -> Iterator[GrowingCoordinator]:
    import time

    now = time.time()
    store = Store(tmp_path / "growing" / "coordinator.db", alive_window=60.0)
    populate_growing_store(store, now)
    root = tmp_path / "growing" / "checkpoints"
    for i, (step, stage) in enumerate(GROWING_CHECKPOINTS):
        ckpt = write_checkpoint(root, step, checkpoint_payload(step, big_bytes=1024), stage=stage)
        report = evaluation_report(step, i / 2)
        store.record_evaluation(ckpt.name, step, report_scores(report, ckpt.name, step), report.seconds)
    info = RunInfo(RUN_ID, {"run_id": RUN_ID}, ["/ip4/127.0.0.1/tcp/31337/p2p/QmTest"], JOIN_COMMAND)
    http = start_http_server(create_http_app(store, root, info), "127.0.0.1", 0)
    try:
        yield GrowingCoordinator(store, http, now)
    finally:
        http.stop()
        store.close()
