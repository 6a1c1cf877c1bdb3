"""The table: one row per phase from its workers' results, printed with the bytes-per-sample ratios and the state
download's share of the link."""

from __future__ import annotations

import argparse


def phase_row(mode: str, n: int, cores: float, results: list[dict]) -> dict:
    """One row of the table from the workers' results of one phase."""
    samples = sum(r["samples"] for r in results)
    return dict(
        mode=mode,
        peers=n,
        cpu_per_peer=cores,
        cores_used=sum(r["cpu_seconds"] / r["wall_seconds"] for r in results),
        util=sum(r["compute_seconds"] for r in results) / sum(r["wall_seconds"] for r in results),
        # where the rest of the wall time went: the swarm optimizer's step, publishing metrics
        step_share=sum(r["step_seconds"] for r in results) / sum(r["wall_seconds"] for r in results),
        metrics_share=(sum(r["metrics_seconds"] for r in results) / sum(r["wall_seconds"] for r in results)),
        bytes_per_sample=sum(r["tx_bytes"] for r in results) / max(samples, 1),
        # an overlapped round sends in the background, so only the total is meaningful there
        round_bytes_per_sample=(
            sum(r["round_tx_bytes"] for r in results) / max(samples, 1) if mode != "overlap" else float("nan")
        ),
        other_bytes_per_s=(
            sum((r["tx_bytes"] - r["round_tx_bytes"]) / r["wall_seconds"] for r in results)
            if mode != "overlap"
            else float("nan")
        ),
        rounds=min(r["rounds"] for r in results),
        round_seconds=max(r["round_seconds"] / max(r["rounds"], 1) for r in results),
        samples_per_s=sum(r["samples"] / r["wall_seconds"] for r in results),
        global_steps=min(r["global_step"] for r in results),
        # sync: the share of the peers' global steps taken on their own gradients only (no group or
        # a failed round); with 2+ peers anything but ~0 means the baseline did not all-reduce
        alone=(
            sum(r["gradient_steps_local"] for r in results) / max(sum(r["gradient_steps"] for r in results), 1)
            if mode == "sync"
            else float("nan")
        ),
        catch_ups=sum(r.get("catch_ups", 0) for r in results),
        rounds_averaged=[r.get("rounds_averaged") for r in results],
    )


def print_report(rows: list[dict], dl: dict | None, opts: argparse.Namespace) -> None:
    print(
        f"\n{'mode':8} {'peers':>5} {'cores':>6} {'util':>6} {'in step':>7} {'metrics':>7} {'bytes/sample':>13} "
        f"{'in rounds':>10} {'other B/s':>10} "
        f"{'s/round':>8} {'samples/s':>10} {'vs 1 peer':>9} {'global steps':>12} {'alone':>6}"
    )
    for row in rows:
        one = next((r for r in rows if r["mode"] == row["mode"] and r["peers"] == 1), None)
        speedup = row["samples_per_s"] / one["samples_per_s"] if one else float("nan")
        print(
            f"{row['mode']:8} {row['peers']:5d} {row['cores_used']:6.2f} {row['util']:6.1%} "
            f"{row.get('step_share', float('nan')):7.1%} {row.get('metrics_share', float('nan')):7.1%} "
            f"{row['bytes_per_sample']:13.0f} {row['round_bytes_per_sample']:10.0f} {row['other_bytes_per_s']:10.0f} "
            f"{row['round_seconds']:8.2f} {row['samples_per_s']:10.1f} {speedup:8.2f}x {row['global_steps']:12d} "
            f"{row.get('alone', float('nan')):6.0%}"
        )
    for low in ("diloco", "overlap"):
        for n in opts.peers:
            s = next((r for r in rows if r["mode"] == "sync" and r["peers"] == n), None)
            d = next((r for r in rows if r["mode"] == low and r["peers"] == n), None)
            if s and d and n > 1 and d["bytes_per_sample"] > 0:
                in_rounds = s["round_bytes_per_sample"] / max(d["round_bytes_per_sample"], 1e-9)
                print(
                    f"{n} peers: all-reduce every step sends {s['bytes_per_sample'] / d['bytes_per_sample']:.0f}x "
                    f"more bytes per sample than {low}"
                    + (f" ({in_rounds:.0f}x counting the averaging rounds only)" if low == "diloco" else "")
                )
    if dl is not None:
        rate_mb = parse_rate_mb(opts.rate)
        print(
            f"state download: {dl['mb']:.1f} MB of parameters ({dl['rx_mb']:.1f} MB received) in {dl['seconds']:.2f}s"
            f" = {dl['mb'] / dl['seconds']:.2f} MB/s of parameters, {dl['rx_mb'] / dl['seconds']:.2f} MB/s on the "
            f"wire, wire = {dl['rx_mb'] / dl['seconds'] / rate_mb:.0%} of the {opts.rate} link ({rate_mb:.2f} MB/s)"
        )


def parse_rate_mb(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for suffix, scale in units.items():
        if rate.endswith(suffix):
            return float(rate[: -len(suffix)]) * scale / 8 / 1e6
    raise SystemExit(f"error: rate must end in kbit, mbit or gbit: {rate}")
