"""``OUT/gpu_check.json`` (rewritten whole after each part) and the summary lines printed at the end."""

from __future__ import annotations

import json
from pathlib import Path


def write(out: Path, report: dict) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "gpu_check.json")


def summary(report: dict) -> list[str]:
    lines = []
    step = report.get("gpu_step") or {}
    for row in step.get("rows", []):
        lines.append(
            f"gpu_step {row['size']:>5} {row['device']}: ours {row.get('ours_seq_per_s') or 0:.1f} seq/s, "
            f"MFU {row.get('ours_mfu') or 0:.3f} (HF {row.get('hf_seq_per_s') or 0:.1f} seq/s, "
            f"MFU {row.get('hf_mfu') or 0:.3f})"
        )
    if step.get("error"):
        lines.append(f"gpu_step failed: {step['error']}")
    offload = report.get("offload_copies") or {}
    if offload.get("error"):
        lines.append(f"offload_copies failed: {offload['error']}")
    elif offload:
        lines.append(
            f"sync mode's offloaded buffers: all pinned {offload['all_pinned']} ({offload['offloaded_buffers']}); "
            f"per global step gradients D2H {offload['d2h_median_seconds'] * 1e3:.1f} ms "
            f"(pageable {offload['d2h_pageable_seconds'] * 1e3:.1f} ms), parameters H2D "
            f"{offload['h2d_median_seconds'] * 1e3:.1f} ms, {offload['bytes_each_way'] / 2**20:.0f} MiB each way"
        )
    cuda = report.get("cuda_tests") or {}
    if cuda:
        skips = "; ".join(f"{s['count']} skipped at {s['where']}: {s['reason']}" for s in cuda["skipped"])
        lines.append(f"CUDA tests: {cuda['summary'] or 'no summary line'}" + (f" ({skips})" if skips else ""))
        if cuda.get("error"):
            lines.append(f"cuda_tests failed: {cuda['error']}")
    swarm = report.get("swarm") or {}
    for peer in swarm.get("peers", []):
        lines.append(
            f"swarm {peer['name']}: {peer['samples_per_second'] or 0:.1f} samples/s "
            f"over {peer['window_seconds']:.0f} s, "
            f"compute utilisation {peer['compute_utilisation_pct']}%, global step {peer['global_step']}"
        )
    if swarm:
        mfu, rss, shm = report.get("swarm_mfu"), swarm["host_rss_peak_bytes"], swarm["dev_shm_peak_bytes"]
        lines.append(
            f"swarm total: {swarm['samples_per_second'] or 0:.1f} samples/s"
            + (f", MFU {mfu:.3f}" if mfu is not None else "")
            + (f", host RSS peak {rss / 2**30:.2f} GiB" if rss else "")
            + (f", /dev/shm peak +{shm / 2**30:.2f} GiB" if shm else "")
        )
        gpu = swarm.get("gpu")
        if gpu:
            lines.append(
                f"GPU: utilisation mean {gpu['utilisation_mean_pct']:.0f}% (max {gpu['utilisation_max_pct']:.0f}%), "
                f"memory peak {gpu['memory_peak_mib']:.0f} of {gpu['memory_total_mib']:.0f} MiB"
            )
    return lines
