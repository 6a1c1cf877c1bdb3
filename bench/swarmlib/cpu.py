"""Each peer's CPU budget: a cgroup v1 quota per peer (``CpuBudget``), and its usage sampled over time
(``CpuSampler``) so that a worker's training window can be read off afterwards."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

CGROUP_V1 = Path("/sys/fs/cgroup")  # cgroup v1: the "cpu" and "cpuacct" hierarchies


class CpuBudget:
    """One cgroup per peer with a CFS quota of ``cores`` (cgroup v1 ``cpu``; usage read from ``cpuacct``).

    A worker joins its cgroup before it execs (``enter``), so p2pd and the processes hivemind forks inherit it."""

    def __init__(self, n: int, cores: float, prefix: str = "wsb") -> None:
        self.cores = cores
        self.paths = [[CGROUP_V1 / kind / f"{prefix}-p{i}" for kind in ("cpu", "cpuacct")] for i in range(n)]

    @staticmethod
    def available() -> bool:
        return (CGROUP_V1 / "cpu" / "cpu.cfs_quota_us").is_file() and (CGROUP_V1 / "cpuacct").is_dir()

    def create(self) -> None:
        if not self.available():
            raise SystemExit(
                "error: --cpu_per_peer needs cgroup v1's cpu and cpuacct controllers under /sys/fs/cgroup "
                "(or pass --cpu_per_peer 0 to share the machine's cores)"
            )
        for cpu, acct in self.paths:
            cpu.mkdir(exist_ok=True)
            acct.mkdir(exist_ok=True)
            period = int((cpu / "cpu.cfs_period_us").read_text())
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.cores * period)))

    def enter(self, i: int) -> None:
        """Runs in the child between fork and exec."""
        for path in self.paths[i]:
            (path / "cgroup.procs").write_text(str(os.getpid()))

    def used_seconds(self, i: int) -> float:
        """CPU seconds used so far by peer ``i``'s whole tree. Read here, not by the worker: ``ip netns exec``
        mounts a fresh /sys for it, without the cgroup file systems."""
        return int((self.paths[i][1] / "cpuacct.usage").read_text()) / 1e9

    def remove(self) -> None:
        for group in self.paths:
            for path in group:
                try:
                    path.rmdir()
                except OSError:
                    pass  # absent, or a process still inside (removed at the next run's create)


class CpuSampler:
    """Samples every peer's CPU seconds twice a second, so a worker's training window (its wall-clock start and
    end) can be read off afterwards."""

    def __init__(self, budget: CpuBudget, n: int) -> None:
        self.budget, self.n = budget, n
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.time(), [self.budget.used_seconds(i) for i in range(self.n)]))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, i: int, start: float, end: float) -> float:
        def at(t: float) -> float:
            return min(self.samples, key=lambda sample: abs(sample[0] - t))[1][i]

        return at(end) - at(start) if self.samples else float("nan")
