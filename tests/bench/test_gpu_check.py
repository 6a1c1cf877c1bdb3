"""``bench/gpu_check.sh --dry-run``: the GPU evidence pipeline (gpu_step's table, a 2-process ``peer join`` swarm,
the samplers, the JSON) run end to end on the CPU at a tiny size, so that the one GPU call it is made for does not
find its bugs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["host"]["gpu"] is None
    step = report["gpu_step"]
    assert step["error"] is None and step["cpu_peak_flops"] > 0
    (row,) = step["rows"]
    assert row["device"] == "cpu" and row["ours_seq_per_s"] > 0 and row["ours_mfu"] > 0
    offload = report["offload_copies"]
    assert offload["error"] is None and offload["global_steps"] >= 2, offload
    assert offload["offloaded_buffers"]["parameters"] > 0 and offload["all_pinned"] is False, "CPU: nothing pinned"
    assert offload["d2h_median_seconds"] > 0 and offload["h2d_median_seconds"] > 0
    swarm = report["swarm"]
    assert [p["name"] for p in swarm["peers"]] == ["peer0", "peer1"]
    for peer in swarm["peers"]:
        assert peer["exit_code"] == 0 and peer["samples"] > 0 and peer["samples_per_second"] > 0, peer
        assert peer["global_step"] >= 1, "the two peers never finished an outer round together"
        assert 0 < peer["compute_utilisation_pct"] <= 100
    assert swarm["samples_per_second"] == pytest.approx(sum(p["samples_per_second"] for p in swarm["peers"]))
    assert swarm["gpu"] is None and swarm["host_rss_peak_bytes"] > 0 and swarm["dev_shm_peak_bytes"] is not None
    assert 0 < report["swarm_mfu"] < 1
    lines = done.stdout.splitlines()
    assert any(line.startswith("swarm total:") and "samples/s" in line and "MFU" in line for line in lines), lines
    assert any(line.startswith("sync mode's offloaded buffers: all pinned False") for line in lines), lines


def test_usage_errors_are_one_line(tmp_path):
    for argv in ([], ["--dry-run"], [str(tmp_path), "--gpu"]):
        done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *argv], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip().startswith("usage:"), (argv, done.stderr)
