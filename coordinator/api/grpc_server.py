"""The coordinator's gRPC server (``protos/warmswarm/v1/coordinator.proto``), with grpc.health.v1 and reflection.
``ListEvaluations`` and each ``ListCheckpoints`` entry's ``evaluation`` answer what ``/api/v1/evaluations`` does;
each entry's ``exports``, ``GetManifest(form)`` and ``Download(form)`` serve a checkpoint's exports as the HTTP API's
``exports`` and ``/exports/<name>/<form>/`` do.

``Download`` follows google.bytestream: the client asks for (offset, limit) and gets the bytes in chunks tagged with
their offset, so a cut transfer resumes from the bytes it already holds; the digest (sha256 + size) comes from the
manifest, which the client checks after the last byte.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.api.checkpoint_files import CheckpointFiles
from coordinator.api.evaluations import evaluation_entries
from coordinator.metrics import CoordinatorMetrics
from coordinator.store import Store
from peer.run.checkpoint_manifest import CheckpointManifest, CheckpointNotFound, UnsafePath
from protos.warmswarm.v1 import coordinator_pb2 as pb
from protos.warmswarm.v1 import coordinator_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20  # the top of bytestream's suggested 64 KiB–1 MiB: fewer messages, same memory bound
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Coordinator"].full_name


def manifest_to_proto(m: CheckpointManifest) -> pb.Manifest:
    files = [pb.FileEntry(path=f.path, digest=pb.Digest(sha256=f.sha256, size_bytes=f.size)) for f in m.files]
    return pb.Manifest(name=m.name, step=m.step, created=m.created, files=files, stage=m.stage)


def export_to_proto(form: str, m: CheckpointManifest) -> pb.Export:
    files = [pb.FileEntry(path=f.path, digest=pb.Digest(sha256=f.sha256, size_bytes=f.size)) for f in m.files]
    return pb.Export(form=form, created=m.created, files=files)


def evaluation_to_proto(entry: dict) -> pb.Evaluation:
    """An ``evaluation_entries`` value as its message (None scores, not numbers, as NaN)."""
    scores = [
        pb.Score(role=x["role"], task=x["task"], metric=x["metric"], mean=_num(x["mean"]), sd=_num(x["sd"]),
                 seeds=x["seeds"], scores=[_num(v) for v in x["scores"]], headline=x["headline"])
        for x in entry["scores"]
    ]  # fmt: skip
    return pb.Evaluation(
        checkpoint=entry["checkpoint"], step=entry["step"], done=entry["done"], attempts=entry["attempts"],
        error=entry["error"], seconds=entry["seconds"] or 0.0, scores=scores,
    )  # fmt: skip


def _num(x: float | None) -> float:
    return math.nan if x is None else x


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    """Answers from the store (progress, peers) and the checkpoints directory (manifests, file bytes)."""

    def __init__(self, store: Store, files: CheckpointFiles, metrics: CoordinatorMetrics | None = None):
        self.store = store
        self.files = files
        self.metrics = metrics

    def GetProgress(self, request: pb.GetProgressRequest, context: grpc.ServicerContext) -> pb.Progress:
        p = self.store.progress()
        return pb.Progress(
            run_id=p.run_id, global_step=p.global_step, alive_peers=p.alive_peers,
            samples_per_second=p.samples_per_second, samples_total=p.samples_total,
            loss=math.nan if p.loss is None else p.loss, updated=p.updated or 0.0,
            eta_seconds=-1.0 if p.eta_seconds is None else p.eta_seconds, total_steps=p.total_steps or 0,
        )  # fmt: skip

    def ListPeers(self, request: pb.ListPeersRequest, context: grpc.ServicerContext) -> pb.ListPeersResponse:
        peers = [
            pb.Peer(
                peer_id=r.peer_id,
                name=r.name,
                samples_total=r.samples,
                samples_per_second=r.samples_per_second,
                seconds_online=r.seconds_online,
                last_seen=r.last_seen,
                step=r.step,
                loss=math.nan if r.loss is None else r.loss,
                alive=r.alive,
            )  # fmt: skip
            for r in self.store.peers()
        ]
        return pb.ListPeersResponse(peers=peers)

    def ListCheckpoints(self, request, context: grpc.ServicerContext) -> pb.ListCheckpointsResponse:
        evaluated = evaluation_entries(self.store)
        listed = []
        for m in self.files.list():
            try:
                exports = self.files.exports(m.name)
            except CheckpointNotFound:  # pruned since files.list()
                continue
            message = manifest_to_proto(m)
            message.exports.extend(export_to_proto(form, e) for form, e in exports.items())
            if m.name in evaluated:
                message.evaluation.CopyFrom(evaluation_to_proto(evaluated[m.name]))
            listed.append(message)
        return pb.ListCheckpointsResponse(checkpoints=listed)

    def ListEvaluations(self, request, context: grpc.ServicerContext) -> pb.ListEvaluationsResponse:
        entries = evaluation_entries(self.store).values()
        return pb.ListEvaluationsResponse(evaluations=[evaluation_to_proto(e) for e in entries])

    def GetManifest(self, request: pb.GetManifestRequest, context: grpc.ServicerContext) -> pb.Manifest:
        try:
            if request.form:
                return manifest_to_proto(self.files.export_manifest(request.name or "latest", request.form))
            return manifest_to_proto(self.files.manifest(request.name or "latest"))
        except CheckpointNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))

    def Download(self, request: pb.DownloadRequest, context: grpc.ServicerContext) -> Iterator[pb.DownloadChunk]:
        if request.offset < 0 or request.limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offset and limit must be >= 0")
        try:
            path, _ = self.files.resolve(request.checkpoint or "latest", request.path, request.form)
        except UnsafePath as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except CheckpointNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if request.offset > size:
                context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is past the end ({size} bytes)")
            end = size if request.limit == 0 else min(size, request.offset + request.limit)
            f.seek(request.offset)
            pos = request.offset
            while pos < end and context.is_active():
                data = f.read(min(CHUNK_BYTES, end - pos))
                if not data:  # the file shrank under us: the checkpoint was pruned mid-download
                    context.abort(grpc.StatusCode.ABORTED, f"{request.path} changed during the download")
                yield pb.DownloadChunk(offset=pos, data=data)
                pos += len(data)
                if self.metrics is not None:
                    self.metrics.add_download_bytes("grpc", len(data))


@dataclass
class GrpcServer:
    """A running gRPC server and the port it got (useful when asked for port 0)."""

    server: grpc.Server
    port: int
    health: health.HealthServicer

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def start_grpc_server(
    store: Store,
    checkpoints_dir: str | Path,
    host: str = "0.0.0.0",
    port: int = 50051,
    metrics: CoordinatorMetrics | None = None,
    max_workers: int = 8,
) -> GrpcServer:
    """Starts serving on ``host:port`` (port 0: any free port) and returns at once; ``stop()`` ends it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"))
    pb_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(store, CheckpointFiles(checkpoints_dir), metrics), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind the gRPC server to {host}:{port}")
    server.start()
    logger.info("gRPC server on %s:%d", host, bound)
    return GrpcServer(server=server, port=bound, health=health_servicer)
