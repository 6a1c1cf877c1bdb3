"""What the coordinator serves: the HTTP server (dashboard, JSON API, ``/metrics``, checkpoint files), the gRPC
server, and the line a volunteer copies to join.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coordinator.api.grpc_server import GrpcServer, start_grpc_server
from coordinator.api.http import HttpServer, RunInfo, create_http_app, start_http_server
from coordinator.auth import PrivateRun
from coordinator.bans import ban_authority_info
from coordinator.deployment import CoordinatorSpec
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import Store
from peer.config import RunConfig, config_to_dict


@dataclass
class Servers:
    """The running servers and the join line that names the HTTP server's address."""

    http: HttpServer
    grpc: GrpcServer
    join_command: str


def start_servers(
    cfg: RunConfig,
    spec: CoordinatorSpec,
    store: Store,
    checkpoints_dir: Path,
    public_host: str,
    initial_peers: list[str],
    signing_public_key: bytes,
    private: PrivateRun | None,
    stoppers: list[Callable[[], None]],
) -> Servers:
    """Starts the HTTP and then the gRPC server on ``spec``'s host and ports, each server's stop appended to
    ``stoppers`` as soon as it runs (so the caller's cleanup ends it if a later step fails)."""
    metrics = CoordinatorMetrics(store)
    http_port = spec.http_port or _free_port(spec.host)  # the join line needs the port before the app exists
    join = " ".join(
        ["python -m peer join --coordinator", f"http://{public_host}:{http_port}", *spec.extra_join_args]
        + (["--auth_key", "NAME:KEY"] if private else [])  # the key `coordinator allowlist add` printed
    )
    run_info = RunInfo(cfg.run_id, config_to_dict(cfg), initial_peers, join)
    run_info = dataclasses.replace(run_info, bans=ban_authority_info(signing_public_key))
    if private is not None:
        run_info = dataclasses.replace(run_info, auth=private.run_info_auth())
    app = create_http_app(store, checkpoints_dir, run_info, metrics, authority=private.authority if private else None)
    http = start_http_server(app, host=spec.host, port=http_port)
    stoppers.append(http.stop)
    grpc = start_grpc_server(store, checkpoints_dir, host=spec.host, port=spec.grpc_port, metrics=metrics)
    stoppers.append(grpc.stop)
    return Servers(http, grpc, join)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
