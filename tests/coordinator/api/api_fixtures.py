"""Builders shared by the coordinator API tests (and the dashboard screenshot): checkpoint directories laid out as
the saver writes them, and a store filled with a plausible run's history."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

from coordinator.store import PeerObservation, Store

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
