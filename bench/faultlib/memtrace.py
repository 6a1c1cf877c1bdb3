"""What grew inside a traced process: the first and last ``tracemalloc`` snapshot of each one, compared.

The snapshots come from ``peer.memory.start_memory_trace`` (``bench/faults.py soak --trace_memory DIR``); the
report (``soak --trace_report DIR``) lists, per process, the allocation sites whose live size grew the most
between its first and last snapshot, with their call stacks, so a slow leak points at a line instead of a process.
"""

from __future__ import annotations

import re
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

SNAPSHOT = re.compile(r"^(?P<role>.+)-(?P<pid>\d+)-(?P<n>\d+)\.tracemalloc$")
IGNORED = (tracemalloc.__file__, "<frozen importlib._bootstrap>", "<unknown>")


@dataclass(frozen=True)
class Growth:
    size_diff: int  # bytes
    count_diff: int
    size: int
    stack: tuple[str, ...]  # "file:line" outermost last, as tracemalloc formats it


@dataclass(frozen=True)
class ProcessGrowth:
    role: str
    pid: int
    snapshots: int
    total_first: int
    total_last: int
    top: list[Growth]


def snapshot_files(directory: Path) -> dict[tuple[str, int], list[Path]]:
    """Snapshot files by (role, pid), in the order they were written."""
    found: dict[tuple[str, int], list[tuple[int, Path]]] = {}
    for path in directory.iterdir():
        m = SNAPSHOT.match(path.name)
        if m:
            found.setdefault((m["role"], int(m["pid"])), []).append((int(m["n"]), path))
    return {key: [p for _, p in sorted(files)] for key, files in sorted(found.items())}


def _load(path: Path) -> tracemalloc.Snapshot:
    return tracemalloc.Snapshot.load(str(path)).filter_traces([tracemalloc.Filter(False, f) for f in IGNORED])


def growth_between(first: Path, last: Path, top: int = 10) -> tuple[int, int, list[Growth]]:
    """(total traced bytes in ``first``, in ``last``, the ``top`` sites by growth)."""
    a, b = _load(first), _load(last)
    stats = b.compare_to(a, "traceback")
    grown = [s for s in stats if s.size_diff > 0][:top]
    total = (sum(s.size for s in a.statistics("filename")), sum(s.size for s in b.statistics("filename")))
    return (
        total[0],
        total[1],
        [Growth(s.size_diff, s.count_diff, s.size, tuple(str(f) for f in s.traceback)) for s in grown],
    )


def trace_report(directory: Path, top: int = 10) -> list[ProcessGrowth]:
    """Every traced process with at least two snapshots; raises ValueError when the directory holds none."""
    files = snapshot_files(directory)
    if not files:
        raise ValueError(f"no tracemalloc snapshots (<role>-<pid>-<n>.tracemalloc) in {directory}")
    out = []
    for (role, pid), paths in files.items():
        if len(paths) < 2:
            continue
        first, last, grown = growth_between(paths[0], paths[-1], top)
        out.append(ProcessGrowth(role, pid, len(paths), first, last, grown))
    return out


def format_report(report: list[ProcessGrowth]) -> str:
    lines = []
    for proc in report:
        lines.append(
            f"{proc.role} pid {proc.pid}: {proc.snapshots} snapshots, traced Python memory "
            f"{proc.total_first / 2**20:.1f} -> {proc.total_last / 2**20:.1f} MiB"
        )
        for g in proc.top:
            now = g.size / 2**10
            lines.append(f"  +{g.size_diff / 2**10:9.1f} KiB  {g.count_diff:+7d} blocks  (now {now:.1f} KiB)")
            lines.extend(f"      {frame}" for frame in g.stack[-4:])
    return "\n".join(lines)
