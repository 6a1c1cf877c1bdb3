"""What is watched while the swarm trains: a polling thread (``Sampler``) over the peers' host RSS, ``/dev/shm`` and
``nvidia-smi`` (utilisation, memory), and the figures read off its samples."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time


class Sampler:
    """Polls ``probe()`` every ``every`` seconds on a thread until stopped; keeps every non-None result."""

    def __init__(self, probe, every: float) -> None:
        self.probe, self.every, self.samples = probe, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                value = self.probe()
            except (OSError, ValueError):
                value = None
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self.every)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(10)
        return self.samples


def tree_rss(pids: list[int]) -> int:
    """Resident memory of these processes and all their descendants (hivemind's DHT and averager forks, p2pd)."""
    import psutil

    total = 0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for p in [root, *root.children(recursive=True)]:
                total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def shm_used() -> int:
    st = os.statvfs("/dev/shm")
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def nvidia_smi() -> str | None:
    return shutil.which("nvidia-smi")


def gpu_name() -> str | None:
    if not nvidia_smi():
        return None
    out = subprocess.run([nvidia_smi(), "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def smi_sample() -> tuple[float, float, float, float] | None:
    """(time, utilization.gpu %, memory.used MiB, memory.total MiB) of the first GPU, from one nvidia-smi call."""
    query = "--query-gpu=utilization.gpu,memory.used,memory.total"
    out = subprocess.run([nvidia_smi(), query, "--format=csv,noheader,nounits"], capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    util, used, total = (float(f) for f in out.stdout.strip().splitlines()[0].split(","))
    return time.time(), util, used, total


def gpu_figures(rows: list[tuple[float, float, float, float]], start: float, end: float) -> dict | None:
    """Utilisation while both peers trained ([start, end]); the memory peak over the whole swarm."""
    inside = [r for r in rows if start <= r[0] <= end] or rows
    if not inside:
        return None
    util = [r[1] for r in inside]
    return {
        "samples": len(inside),
        "utilisation_mean_pct": sum(util) / len(util),
        "utilisation_max_pct": max(util),
        "memory_peak_mib": max(r[2] for r in rows),
        "memory_total_mib": rows[0][3],
    }
