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


def test_evaluations_match_the_json_api_and_ride_on_each_checkpoint(coordinator, channel):
    import httpx

    stub = pb_grpc.CoordinatorStub(channel)
    answer = stub.ListEvaluations(pb.ListEvaluationsRequest(), timeout=10).evaluations
    http = httpx.get(f"{coordinator.url}/api/v1/evaluations", timeout=10).json()["evaluations"]
    assert [(e.checkpoint, e.step, e.done, e.attempts, e.error) for e in answer] == [
        (e["checkpoint"], e["step"], e["done"], e["attempts"], e["error"]) for e in http]  # fmt: skip
    for got, want in zip(answer, http, strict=True):
        assert [(x.role, x.task, x.metric, list(x.seeds), x.headline) for x in got.scores] == [
            (x["role"], x["task"], x["metric"], x["seeds"], x["headline"]) for x in want["scores"]]  # fmt: skip
        assert [x.mean for x in got.scores] == pytest.approx([x["mean"] for x in want["scores"]])
        assert [list(x.scores) for x in got.scores] == [pytest.approx(x["scores"]) for x in want["scores"]]
    listed = {c.name: c for c in stub.ListCheckpoints(pb.ListCheckpointsRequest(), timeout=10).checkpoints}
    assert listed["ckpt-000060"].evaluation == answer[1] and listed["ckpt-000060"].HasField("evaluation")
    assert listed["ckpt-000120"].evaluation.attempts == 1 and not listed["ckpt-000120"].evaluation.done
    assert not stub.GetManifest(pb.GetManifestRequest(name="ckpt-000060"), timeout=10).HasField("evaluation")


def test_an_old_client_reads_the_new_checkpoint_listing(coordinator, channel):
    """A client built before evaluations, exports and growth stages (a Manifest without fields 5, 6 and 7) still
    parses ListCheckpoints: proto3 keeps the unknown fields aside."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    file.name = "old_coordinator.proto"  # in a pool of its own: the same package, the old Manifest
    manifest = next(m for m in file.message_type if m.name == "Manifest")
    for i in reversed(range(len(manifest.field))):
        if manifest.field[i].name in ("evaluation", "exports", "stage"):
            del manifest.field[i]
    assert [f.name for f in manifest.field] == ["name", "step", "created", "files"]
    keep = {"Manifest", "ListCheckpointsResponse", "Digest", "FileEntry"}
    for i in reversed(range(len(file.message_type))):
        if file.message_type[i].name not in keep:
            del file.message_type[i]
    del file.service[:]
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    old = message_factory.GetMessageClass(pool.FindMessageTypeByName("warmswarm.v1.ListCheckpointsResponse"))
    raw = pb_grpc.CoordinatorStub(channel).ListCheckpoints(pb.ListCheckpointsRequest(), timeout=10)
    assert any(c.HasField("evaluation") for c in raw.checkpoints)  # something the old client does not know
    parsed = old.FromString(raw.SerializeToString())
    assert [(c.name, c.step, len(c.files)) for c in parsed.checkpoints] == [
        (c.name, c.step, len(c.files)) for c in raw.checkpoints]  # fmt: skip


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


def test_each_checkpoint_says_its_growth_stage_in_grpc_and_json(coordinator, channel):
    """A checkpoint taken after a growth switch says stage 1 wherever checkpoints are listed; older ones (manifests
    from before stages) say 0."""
    import httpx
    from api_fixtures import checkpoint_payload, write_checkpoint

    from peer.run.coordinator_client import CheckpointsAnswer

    write_checkpoint(coordinator.checkpoints_dir, 300, checkpoint_payload(300, big_bytes=1024), stage=1)
    stub = pb_grpc.CoordinatorStub(channel)
    listed = stub.ListCheckpoints(pb.ListCheckpointsRequest(), timeout=10).checkpoints
    assert [(c.name, c.stage) for c in listed] == [("ckpt-000060", 0), ("ckpt-000120", 0), ("ckpt-000300", 1)]
    assert stub.GetManifest(pb.GetManifestRequest(name="latest"), timeout=10).stage == 1
    answer = httpx.get(f"{coordinator.url}/api/v1/checkpoints", timeout=10).raise_for_status().json()
    assert [c.stage for c in CheckpointsAnswer.model_validate(answer).checkpoints] == [0, 0, 1]
