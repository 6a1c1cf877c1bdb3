"""Rates of the run's cumulative counters over a sliding window, and the ETA rule: pure bookkeeping, no I/O.

Why the swarm's samples/s comes from a counter and not from what peers report: a peer's own figure was an EMA of each
local step's ``batch / step time``, an arithmetic mean of rates, so the many fast steps outweighed the few slow
ones (a step that waits for an averaging round takes seconds and makes no samples); summed over peers it read 2-3x
the samples the swarm actually made (2.1-2.4x on a real 2-peer sync run, ``tests/coordinator/api/
test_swarm_throughput.py``). The increase of a counter over the time it took cannot be fooled that way, and it is
what Prometheus's ``rate()`` computes from ``warmswarm_samples_total``, so the gauge and a PromQL rate agree.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

DEFAULT_RATE_WINDOW = 60.0
"""Seconds of the samples/s window: a minute is the shortest range Prometheus's ``rate()`` serves well at its default
15 s scrape, and long enough to hold several of a swarm's global steps (averaging rounds make the counter bursty)."""

ETA_WINDOW = 600.0
"""Seconds of history the ETA's step rate is measured over."""


@dataclass
class CounterWindow:
    """The points ``(time, value)`` of one cumulative, non-decreasing counter over the last ``window`` seconds.

    ``rate()`` is the counter's increase per second between the oldest and the newest point kept, i.e. over the last
    ``window`` seconds once that much has been seen (less right after the first point). The caller adds a point at
    every pass, also when the counter did not move: that is what makes a stopped counter's rate fall to 0."""

    window: float
    points: deque[tuple[float, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if not self.window > 0:
            raise ValueError(f"a rate window must be > 0 s, not {self.window}")

    def add(self, t: float, value: float) -> None:
        """Adds the counter's value at time ``t``; a point older than the newest one is ignored (clock step)."""
        if self.points and t < self.points[-1][0]:
            return
        self.points.append((t, value))
        while self.points and self.points[0][0] < t - self.window:
            self.points.popleft()

    def rate(self) -> float | None:
        """Increase per second over the points kept; None until two points lie apart in time."""
        if len(self.points) < 2:
            return None
        (t0, v0), (t1, v1) = self.points[0], self.points[-1]
        if t1 <= t0:
            return None
        return max(0.0, v1 - v0) / (t1 - t0)


def eta_seconds(
    steps: Sequence[tuple[float, int]],
    total_steps: int | None,
    global_step: int,
    alive_peers: int,
    updated: float | None,
    now: float,
    stale_after: float,
) -> float | None:
    """Seconds until ``total_steps`` at the step rate of ``steps`` (``(time, global step)`` history points of the
    ETA window, oldest first); None unless the progress is live: a peer alive at the last update, that update
    fresher than ``stale_after`` seconds, and the global step advanced within the points given."""
    if total_steps is None or alive_peers <= 0 or updated is None or now - updated > stale_after or len(steps) < 2:
        return None
    (t0, s0), (t1, s1) = steps[0], steps[-1]
    if t1 <= t0 or s1 <= s0:
        return None
    return max(0.0, (total_steps - global_step) / ((s1 - s0) / (t1 - t0)))
