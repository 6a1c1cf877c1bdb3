"""The gRPC server: the same facts as the JSON API, health, reflection, and Download's argument checks."""

from __future__ import annotations

import hashlib

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from protos.warmswarm.v1 import coordinator_pb2 as pb
from protos.warmswarm.v1 import coordinator_pb2_grpc as pb_grpc


@pytest.fixture
def channel(coordinator):
    with grpc.insecure_channel(coordinator.grpc_target) as ch:
        yield ch


def test_progress_peers_and_checkpoints_match_the_store(coordinator, channel):
    stub = pb_grpc.CoordinatorStub(channel)
    p = stub.GetProgress(pb.GetProgressRequest(), timeout=10)
    want = coordinator.store.progress()
    assert (p.run_id, p.global_step, p.alive_peers, p.samples_total) == (
        want.run_id, want.global_step, want.alive_peers, want.samples_total)  # fmt: skip
    assert p.total_steps == 2000 and p.eta_seconds > 0
    peers = stub.ListPeers(pb.ListPeersRequest(), timeout=10).peers
    assert [x.name for x in peers] == [r.name for r in coordinator.store.peers()] and all(x.alive for x in peers)
    listed = stub.ListCheckpoints(pb.ListCheckpointsRequest(), timeout=10).checkpoints
    assert [c.name for c in listed] == ["ckpt-000060", "ckpt-000120"]
    latest = stub.GetManifest(pb.GetManifestRequest(name="latest"), timeout=10)
    assert latest.name == "ckpt-000120" and latest.step == 120
    data = (coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors").read_bytes()
    entry = next(f for f in latest.files if f.path == "model.safetensors")
    assert (entry.digest.size_bytes, entry.digest.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    with pytest.raises(grpc.RpcError) as e:
        stub.GetManifest(pb.GetManifestRequest(name="ckpt-000180.tmp"), timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_download_streams_bounded_chunks_from_an_offset(coordinator, channel):
    stub = pb_grpc.CoordinatorStub(channel)
    data = (coordinator.checkpoints_dir / "ckpt-000120" / "model.safetensors").read_bytes()
    req = pb.DownloadRequest(checkpoint="ckpt-000120", path="model.safetensors", offset=12345, limit=2_500_000)
    chunks = list(stub.Download(req, timeout=30))
    assert all(64 << 10 <= len(c.data) <= 1 << 20 for c in chunks[:-1])
    assert chunks[0].offset == 12345 and b"".join(c.data for c in chunks) == data[12345 : 12345 + 2_500_000]
    at_end = list(stub.Download(pb.DownloadRequest(checkpoint="latest", path="model.safetensors", offset=len(data))))
    assert at_end == []  # reading from the end is an empty stream, as in bytestream


@pytest.mark.parametrize(
    "path, offset, limit, code",
    [
        ("../../coordinator.db", 0, 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("generator/../../ckpt-000060/config.json", 0, 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("/etc/passwd", 0, 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("not-in-manifest.bin", 0, 0, grpc.StatusCode.NOT_FOUND),
        ("model.safetensors", (3 << 20) + 1, 0, grpc.StatusCode.OUT_OF_RANGE),
        ("model.safetensors", -1, 0, grpc.StatusCode.INVALID_ARGUMENT),
        ("model.safetensors", 0, -5, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_download_rejects_bad_paths_and_offsets(channel, path, offset, limit, code):
    stub = pb_grpc.CoordinatorStub(channel)
    req = pb.DownloadRequest(checkpoint="ckpt-000120", path=path, offset=offset, limit=limit)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Download(req, timeout=10))
    assert e.value.code() == code, e.value.details()


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "warmswarm.v1.Coordinator"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert {"warmswarm.v1.Coordinator", "grpc.health.v1.Health"} <= names
