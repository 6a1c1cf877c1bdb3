"""Deterministic shuffling: per-peer seeds and a bounded shuffle buffer for streams.

Every peer must see the corpus in its own order (else the swarm averages gradients of the same samples), yet a
restarted peer must reproduce its order exactly; so seeds are derived, never drawn from the clock.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def seed_from_bytes(b: bytes) -> int:
    """A 63-bit seed from arbitrary bytes (e.g. a peer's public key): stable across runs, machines and Python versions
    (unlike ``hash``), and well spread even for keys that differ in one byte."""
    return int.from_bytes(hashlib.blake2b(bytes(b), digest_size=8).digest(), "big") >> 1


def derive_seed(*parts: int | str) -> int:
    """One seed from several (run seed, peer seed, epoch, purpose), so the streams they drive are independent."""
    return seed_from_bytes("/".join(str(p) for p in parts).encode())


def buffer_shuffle(items: Iterable[T], buffer_size: int, seed: int) -> Iterator[T]:
    """Yields ``items`` in a seeded random order using at most ``buffer_size`` items of memory.

    Each new item replaces a uniformly chosen one from the full buffer, which is yielded; the rest drain in random
    order at the end. Same seed and input -> same order."""
    if buffer_size <= 1:
        yield from items
        return
    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = item
    rng.shuffle(buffer)
    yield from buffer
