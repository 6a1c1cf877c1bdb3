"""The soak: a coordinator and N peers for an hour, and does any of them leak memory?

A month-long run dies of slow leaks, not of crashes: a DHT cache that never expires, a metric history kept in RAM,
a p2pd that accumulates streams. So every ~2 s, at jittered times, this samples the RSS of every process of every
child session (the peer's Python process, its p2pd, hivemind's forks; the same for the coordinator) and compares the
mean of the first ``window`` seconds with the mean of the last ``window`` seconds, for RSS and for ``RssAnon``
(anonymous memory only: reclaim under other jobs' pressure drops file pages from RSS and can hide a leak there, not
here).
Startup (imports, the first download, the first averaging round) is excluded: the clock starts when the
coordinator sees every peer alive, and the first window starts ``warmup`` seconds later. Why the warm-up: the
coordinator's first checkpoint pull, a minute or two in, allocates its decoded state once (RssAnon 206 -> 325 MiB,
then 325-328 MiB for the rest of the hour, 2026-12-04); inside the first window that one step read as +12 % growth.
``bench/faults.py soak --analyse rss.csv`` recomputes the figures of a finished run with other windows.

Why dense, jittered samples: an averager holds a round's parts and buffers (+10-40 MiB on ~370 MiB) for about half
of its ~12 s round cycle, and the peers' rounds are in step. The first soaks sampled every 30 s on a fixed clock:
that is 20 samples per 10-minute window, all taken at the same instant in every process, so a window's mean
depended on which phase of the round cycle the clock drifted through (a 1 Hz trace of eight averagers: 1.6-3.1 %
between the best and worst 30-s phase within one window, and the windows' difference doubles it) - the swarm-wide
"waves" of the averagers. Samples ~2 s apart at random offsets see every phase of the cycle, so a window's mean is
the process's time-average.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.faultlib.procs import Coordinator, TinyModel, anon_bytes, prepare_run, rss_bytes, start_peer
from peer.children import Child, ProcessSet, process_name, sessions_pids

logger = logging.getLogger(__name__)

GROWTH_TARGET = 0.05
FLOOR_QUANTILE = 0.1  # the floor of a window: what a process holds between rounds, where a leak would show first


@dataclass
class Series:
    """RSS and RssAnon over time of one process, named ``<child>:<role>`` (role: main, p2pd, or fork-<pid>)."""

    name: str
    times: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    anon: list[int] = field(default_factory=list)

    def between(self, start: float, end: float, values: list[int] | None = None) -> list[int]:
        values = self.rss if values is None else values
        return [r for t, r in zip(self.times, values, strict=True) if start <= t <= end]

    def mean_between(self, start: float, end: float, values: list[int] | None = None) -> float | None:
        picked = self.between(start, end, values)
        return sum(picked) / len(picked) if picked else None

    def quantile_between(self, start: float, end: float, q: float, values: list[int] | None = None) -> float | None:
        """The ``q`` quantile (nearest rank, from below) of the samples in [start, end]."""
        picked = sorted(self.between(start, end, values))
        return float(picked[int(q * (len(picked) - 1))]) if picked else None


@dataclass
class Growth:
    name: str
    first_mib: float
    last_mib: float
    growth: float  # (last - first) / first, RSS
    anon_first_mib: float = 0.0
    anon_last_mib: float = 0.0
    anon_growth: float = 0.0  # the same for RssAnon
    # least-squares line through every RssAnon sample after the warm-up: its rise over that span / its start value.
    # Context, not judged: a leak rises steadily, while the judged windows also catch where the averagers' rounds
    # happen to be (a round holds its parts and buffers for a second or two) when a sample is taken
    anon_trend: float = 0.0
    # the same windows' FLOOR_QUANTILE of RssAnon (last / first - 1). Context, not judged: a leak raises the floor
    # too, while a round in flight at more of the last window's samples only raises the mean
    anon_floor_growth: float = 0.0

    @property
    def passed(self) -> bool:
        return self.growth < GROWTH_TARGET and self.anon_growth < GROWTH_TARGET


@dataclass
class SoakResult:
    peers: int
    duration_s: float
    window_s: float
    warmup_s: float
    interval_s: float
    samples: int
    global_step_start: int
    global_step_end: int
    checkpoints: list[str]
    deaths: list[str]
    growth: list[Growth]

    @property
    def worst(self) -> Growth | None:
        return max(self.growth, key=lambda g: g.growth, default=None)

    @property
    def passed(self) -> bool:
        return not self.deaths and bool(self.growth) and all(g.passed for g in self.growth)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["passed"] = self.passed
        return out


def role_of(child: Child, pid: int) -> str:
    if pid == child.pid:
        return f"{child.name}:main"
    if process_name(pid) == "p2pd":
        return f"{child.name}:p2pd"
    return f"{child.name}:fork-{pid}"


def sample(children: list[Child], series: dict[str, Series], now: float, writer) -> None:
    """One RSS reading of every process, plus ``<child>:all`` (the sum over its session: a leak that moves
    between forks still shows there; shared copy-on-write pages are counted once per process)."""
    pids = sessions_pids([child.pid for child in children])
    for child in children:
        total = 0
        total_anon = 0
        for pid in pids[child.pid]:
            rss, anon = rss_bytes(pid), anon_bytes(pid)
            if not rss:
                continue
            name = role_of(child, pid)
            if name.endswith(":p2pd") and name in series and series[name].times and series[name].times[-1] == now:
                name = f"{name}-{pid}"  # a second daemon in one session (not expected; kept apart, not summed)
            entry = series.setdefault(name, Series(name))
            entry.times.append(now)
            entry.rss.append(rss)
            entry.anon.append(anon)
            writer.writerow([f"{now:.1f}", name, pid, rss, anon])
            total += rss
            total_anon += anon
        if total:
            entry = series.setdefault(f"{child.name}:all", Series(f"{child.name}:all"))
            entry.times.append(now)
            entry.rss.append(total)
            entry.anon.append(total_anon)


def jittered(interval: float, rng: random.Random) -> float:
    """A gap between samples: uniform in [interval / 2, 3 interval / 2], so the samples fall at every phase of any
    periodic activity (the averagers' round cycle) instead of locking onto one."""
    return interval * rng.uniform(0.5, 1.5)


def fitted_growth(times: list[float], values: list[int], start: float, end: float) -> float:
    """The least-squares line through the samples in [start, end]: (its value at the last sample - at the first)
    / its value at the first; 0.0 with fewer than two samples."""
    picked = [(t, v) for t, v in zip(times, values, strict=True) if start <= t <= end]
    if len(picked) < 2:
        return 0.0
    mean_t = sum(t for t, _ in picked) / len(picked)
    mean_v = sum(v for _, v in picked) / len(picked)
    spread = sum((t - mean_t) ** 2 for t, _ in picked)
    if not spread:
        return 0.0
    slope = sum((t - mean_t) * (v - mean_v) for t, v in picked) / spread
    at_first = mean_v + slope * (picked[0][0] - mean_t)
    return slope * (picked[-1][0] - picked[0][0]) / at_first if at_first else 0.0


def growth_of(series: dict[str, Series], start: float, end: float, window: float, warmup: float = 0.0) -> list[Growth]:
    """Mean RSS and RssAnon of the window that starts ``warmup`` after ``start`` vs the last window, for every
    process that lived through both."""
    start += warmup
    out = []
    for s in series.values():
        if not s.times or s.times[0] > start + window or s.times[-1] < end - window:
            continue
        first, last = s.mean_between(start, start + window), s.mean_between(end - window, end)
        anon_first = s.mean_between(start, start + window, s.anon) or 0.0
        anon_last = s.mean_between(end - window, end, s.anon) or 0.0
        if first and last:
            anon_growth = (anon_last - anon_first) / anon_first if anon_first else 0.0
            floor_first = s.quantile_between(start, start + window, FLOOR_QUANTILE, s.anon) or 0.0
            floor_last = s.quantile_between(end - window, end, FLOOR_QUANTILE, s.anon) or 0.0
            out.append(
                Growth(
                    s.name,
                    first / 2**20,
                    last / 2**20,
                    (last - first) / first,
                    anon_first / 2**20,
                    anon_last / 2**20,
                    anon_growth,
                    fitted_growth(s.times, s.anon, start, end),
                    (floor_last - floor_first) / floor_first if floor_first else 0.0,
                )
            )
    return sorted(out, key=lambda g: g.name)


def plot(series: dict[str, Series], start: float, path: Path) -> None:
    """Left: each child's whole session (sum); right: every process on its own (main, p2pd, hivemind forks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (total_ax, each_ax) = plt.subplots(1, 2, figsize=(14, 6))
    colors = plt.get_cmap("tab20").colors
    drawn = [s for s in sorted(series.values(), key=lambda s: s.name) if len(s.times) >= 2]
    for i, s in enumerate(drawn):
        ax = total_ax if s.name.endswith(":all") else each_ax
        style = "--" if ":p2pd" in s.name else (":" if ":fork" in s.name else "-")
        minutes = [(t - start) / 60 for t in s.times]
        ax.plot(minutes, [r / 2**20 for r in s.rss], style, color=colors[i % 20], label=s.name, linewidth=1)
    total_ax.set_title("each child's session (sum of its processes)")
    each_ax.set_title("each process (solid: main, dashed: p2pd, dotted: hivemind forks)")
    for ax in (total_ax, each_ax):
        ax.set_xlabel("minutes since every peer was alive")
        ax.set_ylabel("RSS (MiB)")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_soak(
    work: Path,
    peers: int = 4,
    duration: float = 3600.0,
    interval: float = 2.0,
    window: float = 600.0,
    png: Path | None = None,
    warmup: float = 300.0,
    seed: int = 0,
) -> SoakResult:
    """Starts the swarm in ``work``, samples for ``duration`` seconds, stops everything, returns the figures.
    ``window`` and ``warmup`` shrink to a third and a sixth of the duration for short (smoke) runs. Samples are
    ``interval`` apart on average, each gap drawn from [interval / 2, 3 interval / 2] (``seed``): see the module's
    docstring for why."""
    if not interval > 0:
        raise ValueError(f"the sampling interval must be > 0 seconds, got {interval}")
    gaps = random.Random(seed)
    window, warmup = min(window, duration / 3), min(warmup, duration / 6)
    run = prepare_run(work / "run", "soak", TinyModel())
    with ProcessSet(work / "procs") as procs, open(work / "rss.csv", "w", newline="") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(["time", "process", "pid", "rss_bytes", "rss_anon_bytes"])
        coordinator = Coordinator(procs, run, work / "data", checkpoint_every=20, keep_last=3)
        coordinator.start()
        members = [start_peer(procs, f"peer{i}", coordinator) for i in range(peers)]
        coordinator.wait_for(f"{peers} peers alive", lambda p: p.get("alive_peers", 0) >= peers, timeout=600)
        step_start = coordinator.progress().get("global_step", 0)
        children = [coordinator.child, *members]
        series: dict[str, Series] = {}
        deaths: list[str] = []
        start = time.time()
        logger.info("all %d peers alive at global step %d; sampling RSS every ~%g s", peers, step_start, interval)
        next_report = start + 300
        while True:
            now = time.time()
            sample(children, series, now, writer)
            csv_file.flush()
            for child in children:
                if not child.alive() and child.name not in deaths:
                    deaths.append(child.name)
                    logger.error("%s died with code %s:\n%s", child.name, child.proc.returncode, child.tail(1500))
            if now >= next_report:
                step = coordinator.progress().get("global_step", -1) if coordinator.child.alive() else -1
                total = sum(s.rss[-1] for s in series.values() if s.name.endswith(":all") and s.times[-1] == now)
                total /= 2**20
                logger.info("soak %4.0f/%0.f s: global step %d, %.0f MiB in all", now - start, duration, step, total)
                next_report = now + 300
            if now - start >= duration:
                break
            time.sleep(max(0.0, min(jittered(interval, gaps), start + duration - time.time())))
        end = time.time()
        step_end = coordinator.progress().get("global_step", 0)
        checkpoints = [c["name"] for c in coordinator.get("/api/v1/checkpoints")["checkpoints"]]
    if png is not None:
        plot(series, start, png)
    return SoakResult(
        peers=peers,
        duration_s=end - start,
        window_s=window,
        warmup_s=warmup,
        interval_s=interval,
        samples=max((len(s.times) for s in series.values()), default=0),
        global_step_start=step_start,
        global_step_end=step_end,
        checkpoints=checkpoints,
        deaths=deaths,
        growth=growth_of(series, start, end, window, warmup),
    )


def series_from_csv(path: Path) -> dict[str, Series]:
    """The per-process series of a soak's ``rss.csv`` (the ``<child>:all`` sums are not in the file)."""
    series: dict[str, Series] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            entry = series.setdefault(row["process"], Series(row["process"]))
            entry.times.append(float(row["time"]))
            entry.rss.append(int(row["rss_bytes"]))
            entry.anon.append(int(row["rss_anon_bytes"]))
    if not series:
        raise ValueError(f"{path} holds no samples")
    return series


def write_json(result: SoakResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
