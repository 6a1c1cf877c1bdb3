"""Regenerates the committed gRPC Python code from ``protos/warmswarm/v1/*.proto``.

Run ``python -m protos.generate`` after editing a ``.proto``. The proto is compiled with the repository root as the
include path, so the generated ``*_pb2_grpc.py`` imports ``protos.warmswarm.v1.coordinator_pb2`` and works as an
installed package. A test regenerates into a temp dir and compares, so the committed code never drifts from the
``.proto`` or from the pinned grpcio-tools (generated stubs refuse to run against an older grpcio).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = REPO_ROOT / "protos" / "warmswarm" / "v1"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Compiles every proto into ``out_root`` (mirroring ``protos/warmswarm/v1``); returns the generated files."""
    out_root.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    sources = [str(p.relative_to(REPO_ROOT)) for p in proto_files()]
    args = ["grpc_tools.protoc", f"-I{REPO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--grpc_python_out={out_root}", *sources]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(sources)}")
    return sorted((out_root / "protos" / "warmswarm" / "v1").glob("*_pb2*.py"))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    for path in generate(REPO_ROOT):
        print(path.relative_to(REPO_ROOT))


if __name__ == "__main__":
    main()
