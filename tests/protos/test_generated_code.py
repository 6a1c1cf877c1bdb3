"""The committed gRPC code is exactly what the pinned grpcio-tools makes from the committed .proto."""

from __future__ import annotations

from pathlib import Path

import grpc

from protos import generate
from protos.warmswarm.v1 import coordinator_pb2


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path):
    fresh = generate.generate(tmp_path)
    assert {p.name for p in fresh} == {
        "coordinator_pb2.py",
        "coordinator_pb2_grpc.py",
        "state_parts_pb2.py",  # peer to peer: a joiner's request for a range of a donor's state
        "state_parts_pb2_grpc.py",
    }
    for path in fresh:
        committed = generate.PROTO_DIR / path.name
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run python -m protos.generate"


def test_generated_stubs_target_the_installed_grpcio_and_the_contract_package():
    text = (generate.PROTO_DIR / "coordinator_pb2_grpc.py").read_text()
    assert f"GRPC_GENERATED_VERSION = '{grpc.__version__}'" in text
    service = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    assert service.full_name == "warmswarm.v1.Coordinator"
    methods = {m.name for m in service.methods}
    assert methods == {"GetProgress", "ListPeers", "ListCheckpoints", "GetManifest", "Download", "ListEvaluations"}
    assert service.methods_by_name["Download"].server_streaming
