"""Which donors a joining peer downloads the swarm's state from, and which tensors it asks each for: pure functions,
used by the split download (``peer.swarm.overrides.state_parts``) in the averager's process.

Why not hivemind's choice: ``load_state_from_peers`` sorts the declared peers by priority (their epoch) and asks
the first, so every newcomer of a moment streams the whole state from the same donor (hivemind issue #169) and
eight joiners take eight times as long as one. Here each joiner takes the donors that hold the newest state, in an
order of its own (rendezvous hashing of its peer id with theirs: different joiners start with different donors,
and the same joiner asks again in the same order), and splits the state into contiguous tensor ranges of equal
bytes, one per donor, so the joiners' load spreads over every donor's uplink.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence


def newest_donors(declared: Mapping[bytes, float], me: bytes) -> list[bytes]:
    """The peers that declare the newest state (the highest priority: hivemind's state averager declares its epoch),
    ``me`` left out. Why only those: parts are assembled from several donors, which must hold the same state; an
    older donor would also be a worse start than the newest one."""
    others = {peer: priority for peer, priority in declared.items() if peer != me}
    if not others:
        return []
    newest = max(others.values())
    return [peer for peer, priority in others.items() if priority == newest]


def donor_order(me: bytes, donors: Iterable[bytes]) -> list[bytes]:
    """``donors`` in this joiner's rendezvous order (highest sha256(me, donor) first): a fixed order per joiner,
    independent across joiners, so that joiners capped at a few donors each still cover all of them evenly, and a
    joiner that asks again does not jump to another subset."""
    return sorted(donors, key=lambda donor: hashlib.sha256(me + b"/" + donor).digest(), reverse=True)


def split_by_bytes(sizes: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous ranges ``[start, stop)`` of the tensors with ``sizes`` bytes, at most ``parts`` of them, none
    empty, each ending at the first tensor that takes the running total to its share: with many tensors the ranges
    hold close to equal bytes, so each donor is busy for about the same time."""
    n = len(sizes)
    if n == 0:
        return []
    parts = max(1, min(parts, n))
    total = sum(sizes)
    ranges: list[tuple[int, int]] = []
    start = running = 0
    for i, size in enumerate(sizes):
        running += size
        later = parts - len(ranges) - 1  # ranges still to make after the one this tensor is in
        if later == 0:
            break  # the last range takes the rest
        # its share reached, or as many tensors left as ranges to make (each gets one)
        if running * parts >= total * (len(ranges) + 1) or n - (i + 1) == later:
            ranges.append((start, i + 1))
            start = i + 1
    ranges.append((start, n))
    return ranges


def runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """The sorted ``indices`` as contiguous ranges ``[start, stop)``."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out
