"""peer.memory on this machine's glibc: the arena cap is accepted, and a trim hands freed heap pages back to the OS
(measured as the process's RssAnon in a fresh subprocess, so the test's own heap does not matter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from peer.memory import PeriodicRelease, limit_malloc_arenas, map_large_allocations

REPO = Path(__file__).resolve().parents[2]

FRAGMENT_THEN_TRIM = r"""
import gc, sys
from peer.memory import release_free_memory

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

blocks = [bytearray(4000) for _ in range(60_000)]  # ~240 MB of blocks too big for pymalloc: glibc's heap
kept = blocks[::100]  # a few survivors scattered over the heap, as after an all-reduce's buffers are freed
del blocks
gc.collect()
before = anon_kib()
released = release_free_memory()
after = anon_kib()
print(before, after, released, len(kept))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_a_trim_returns_the_freed_heap_of_a_fragmented_process_to_the_os():
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT_THEN_TRIM], capture_output=True, text=True, cwd=REPO, timeout=120, check=True
    ).stdout.split()
    before, after, released = int(out[0]), int(out[1]), out[2] == "True"
    assert released
    # the survivors pin one block in a hundred: without the trim glibc keeps ~200 MB of free pages mapped
    assert before - after > 100 * 1024, f"RssAnon {before} KiB -> {after} KiB"


LARGE_BLOCKS_FREED = r"""
import gc, sys
from peer.memory import map_large_allocations

def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])

if sys.argv[1] == "mapped":
    assert map_large_allocations()
block = int(sys.argv[2]) << 10
first = bytearray(4 << 20)  # freeing this one raises glibc's own threshold above 4 MiB (unless it is fixed)
del first
start = anon_kib()
blocks, small = [], []
for _ in range((200 << 20) // block):  # a round's buffers, with small objects between them that outlive the round
    blocks.append(bytearray(block))
    small.append(bytearray(2048))
del blocks
gc.collect()
print(start, anon_kib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
@pytest.mark.parametrize("mode", ["mapped", "glibc-default"])
@pytest.mark.parametrize("block_kib", [4 << 10, 256])  # a multi-MiB buffer; an all-reduce part (a short one)
def test_freed_large_blocks_leave_the_process_at_once_only_with_a_fixed_mmap_threshold(mode, block_kib):
    out = subprocess.run(
        [sys.executable, "-c", LARGE_BLOCKS_FREED, mode, str(block_kib)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    ).stdout.split()
    start, after = int(out[0]), int(out[1])
    kept = after - start  # KiB still resident after the 200 MiB of blocks were freed
    if mode == "mapped":
        assert kept < 20 * 1024, f"{kept} KiB kept"
    else:  # what the averagers did before: the heap keeps the blocks' pages behind the small survivors
        assert kept > 150 * 1024, f"only {kept} KiB kept: glibc's default no longer keeps them, rethink the test"


def test_the_mmap_threshold_is_bounded_as_glibc_bounds_it():
    with pytest.raises(ValueError, match="mmap threshold must be in"):
        map_large_allocations(64 << 20)


def test_the_arena_cap_is_applied_and_a_bad_count_refused():
    assert limit_malloc_arenas(2) is True
    with pytest.raises(ValueError, match="need at least 1 malloc arena, got 0"):
        limit_malloc_arenas(0)


def test_the_averagers_threshold_is_well_below_an_all_reduce_part():
    from hivemind.averaging.partition import DEFAULT_PART_SIZE_BYTES

    from peer.memory import AVERAGER_MMAP_THRESHOLD

    # the parts are what the averagers' executor threads allocate and free every round (peer.memory)
    assert AVERAGER_MMAP_THRESHOLD <= DEFAULT_PART_SIZE_BYTES // 4


def test_the_training_loop_releases_at_most_once_a_period_and_not_at_start_up():
    now = [100.0]
    calls = []
    releaser = PeriodicRelease(every=60.0, clock=lambda: now[0], release=lambda: calls.append(now[0]) or True)
    fired = []
    for t in [100.0, 130.0, 159.9, 160.0, 161.0, 200.0, 219.9, 220.0, 1000.0]:
        now[0] = t
        fired.append(releaser.maybe())
    assert fired == [False, False, False, True, False, False, False, True, True]
    assert calls == [160.0, 220.0, 1000.0]
    with pytest.raises(ValueError, match="must be > 0"):
        PeriodicRelease(every=0)
