"""The comparison's summary over seeds, its plot, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

import torch

from bench.electralib.probes import CHANCE, PROBES

ENCODERS = ("ELECTRA", "MLM", "random init")


def summarise(per_seed: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean, sample standard deviation, min and max over seeds, per encoder and probe."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for enc in ENCODERS:
        out[enc] = {}
        for probe in PROBES:
            vals = [r["probes"][enc][probe] for r in per_seed]
            out[enc][probe] = {
                "mean": statistics.fmean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "min": min(vals),
                "max": max(vals),
            }
    return out


def plot(summary: dict, per_seed: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PROBES), figsize=(4 * len(PROBES), 3.6))
    colors = {"ELECTRA": "tab:blue", "MLM": "tab:orange", "random init": "tab:gray"}
    for ax, (probe, label) in zip(axes, PROBES.items(), strict=True):
        for i, enc in enumerate(ENCODERS):
            s = summary[enc][probe]
            ax.bar(i, s["mean"], yerr=s["std"], capsize=4, color=colors[enc], alpha=0.8)
            vals = [r["probes"][enc][probe] for r in per_seed]
            ax.scatter([i] * len(vals), vals, color="black", s=10, zorder=3)
        ax.axhline(CHANCE[probe], color="gray", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(ENCODERS)), ENCODERS)
        lows = [r["probes"][e][probe] for r in per_seed for e in ENCODERS]
        ax.set_ylim(min(CHANCE[probe], min(lows)) - 0.05, max(lows) + 0.05)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_average_start": os.getloadavg(),
    }
