"""Checkpoint download speed on loopback: HTTP and gRPC (through ``peer.run.download``, which also verifies
sha256) against a plain file copy, a copy plus sha256, and curl on the same HTTP endpoint.

The servers run in a child process (as in a real coordinator), so the client does not share their GIL. Prints a
Markdown table of the median MB/s (1 MB = 10^6 bytes) over ``--repeats`` runs.

    .venv/bin/python bench/downloads.py --size_mb 256 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

BLOCK = 16 << 20


def make_checkpoint(root: Path, size: int) -> Path:
    d = root / "checkpoints" / "ckpt-000100"
    d.mkdir(parents=True)
    h = hashlib.sha256()
    with open(d / "model.safetensors", "wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            f.write(block)
            h.update(block)
            left -= len(block)
    entry = {"path": "model.safetensors", "size": size, "sha256": h.hexdigest()}
    (d / "manifest.json").write_text(json.dumps({"files": [entry], "step": 100}))
    return d


def serve(data_dir: str, conn) -> None:
    """Child process: the coordinator's HTTP and gRPC servers over ``data_dir`` until told to stop."""
    from coordinator.api.grpc_server import start_grpc_server
    from coordinator.api.http import RunInfo, create_http_app, start_http_server
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.store import Store

    store = Store(Path(data_dir) / "coordinator.db")
    store.open_run("bench", {})
    metrics = CoordinatorMetrics(store)
    ckpts = Path(data_dir) / "checkpoints"
    http = start_http_server(create_http_app(store, ckpts, RunInfo("bench", {}), metrics), "127.0.0.1", 0)
    grpc_server = start_grpc_server(store, ckpts, "127.0.0.1", 0, metrics=metrics)
    conn.send((http.port, grpc_server.port))
    conn.recv()
    grpc_server.stop(0)
    http.stop()


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size_mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from peer.run.download import download

    size = args.size_mb * 10**6
    with tempfile.TemporaryDirectory(prefix="warmswarm-bench-") as tmp:
        root = Path(tmp)
        src = make_checkpoint(root / "data", size) / "model.safetensors"
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=serve, args=(str(root / "data"), child), daemon=True)
        proc.start()
        try:
            http_port, grpc_port = parent.recv()
            out = root / "out"

            def fresh() -> Path:
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                return out

            def copy_and_hash() -> None:
                shutil.copyfile(src, fresh() / "m")
                h = hashlib.sha256()
                with open(out / "m", "rb") as f:
                    while b := f.read(1 << 20):
                        h.update(b)

            def curl() -> None:
                url = f"http://127.0.0.1:{http_port}/checkpoints/ckpt-000100/model.safetensors"
                subprocess.run(["curl", "-sSf", "-o", str(fresh() / "m"), url], check=True)

            cases = {
                "plain file copy (shutil.copyfile)": lambda: shutil.copyfile(src, fresh() / "m"),
                "file copy + sha256": copy_and_hash,
                "curl over HTTP (no verification)": curl,
                "HTTP, peer.run.download (+ sha256)": lambda: download(
                    f"http://127.0.0.1:{http_port}", fresh(), progress=False
                ),
                "gRPC, peer.run.download (+ sha256)": lambda: download(
                    f"grpc://127.0.0.1:{grpc_port}", fresh(), progress=False
                ),
            }
            print(f"| {args.size_mb} MB file, loopback, median of {args.repeats} | MB/s | seconds |")
            print("|---|---:|---:|")
            for name, fn in cases.items():
                if name.startswith("curl") and shutil.which("curl") is None:
                    continue
                secs = statistics.median(timed(fn) for _ in range(args.repeats))
                print(f"| {name} | {size / secs / 1e6:.0f} | {secs:.2f} |", flush=True)
        finally:
            parent.send("stop")
            proc.join(30)
            if proc.is_alive():
                proc.kill()


if __name__ == "__main__":
    main()
