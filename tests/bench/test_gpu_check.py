"""``bench/gpu_check.sh --dry-run``: the GPU evidence pipeline (gpu_step's table, the offloaded copies, the CUDA-only
tests, a 2-process ``peer join`` swarm, the samplers, the JSON) run end to end on the CPU at a tiny size, so that the
one GPU call it is made for does not find its bugs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.gpucheck.children import cuda_tests_error, read_pytest_output

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_dry_run_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=520,  # the dry run took 235 s end to end at load average 20 on the 2-core dev machine
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
    cuda = report["cuda_tests"]
    assert cuda["error"] is None and cuda["rc"] == 0, cuda
    assert "passed" in cuda["summary"] and "skipped" in cuda["summary"], cuda
    # on the CPU the CUDA-only test skips, and says why: expected here, a failure of this part on a GPU
    assert cuda["skipped_for_no_cuda"] >= 1 and all("CUDA" in s["reason"] for s in cuda["skipped"]), cuda
    assert "SKIPPED" in (out / "cuda_tests.log").read_text()
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
    assert any(line.startswith("CUDA tests:") and "skipped" in line for line in lines), lines


PYTEST_OUTPUT = """\
.s....                                                                   [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/peer/swarm/test_good_state.py:125: CUDA only: page-locked buffers and asynchronous saves
5 passed, 1 skipped in 21.37s
"""


def test_the_cuda_tests_part_reads_pytests_summary_and_skips_and_fails_on_a_gpu_only():
    summary, skipped = read_pytest_output(PYTEST_OUTPUT)
    assert summary == "5 passed, 1 skipped in 21.37s"
    assert skipped == [{"count": 1, "where": "tests/peer/swarm/test_good_state.py:125",
                        "reason": "CUDA only: page-locked buffers and asynchronous saves"}]  # fmt: skip
    assert cuda_tests_error("cpu", 0, summary, skipped, 150) is None, "the dry run's CPU: the skip is expected"
    assert "skipped for lack of CUDA" in cuda_tests_error("cuda", 0, summary, skipped, 150)
    assert cuda_tests_error("cuda", 0, "6 passed in 9.00s", [], 150) is None
    assert cuda_tests_error("cuda", 1, "1 failed, 5 passed in 9.00s", [], 150).startswith("exit 1: 1 failed")
    assert cuda_tests_error("cuda", None, None, [], 150) == "pytest ran past 150 s"
    assert read_pytest_output("==== 2 passed, 1 warning in 3.10s ====\n")[0] == "2 passed, 1 warning in 3.10s"


def test_usage_errors_are_one_line(tmp_path):
    for argv in ([], ["--dry-run"], [str(tmp_path), "--gpu"]):
        done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), *argv], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.strip().startswith("usage:"), (argv, done.stderr)
