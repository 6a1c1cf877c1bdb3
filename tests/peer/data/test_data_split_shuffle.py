"""Held-out split by stable hash, per-peer seeds, and the bounded shuffle buffer."""

import pytest

from peer.data.shuffle import buffer_shuffle, derive_seed, seed_from_bytes
from peer.data.split import heldout_score, is_heldout


def test_heldout_score_is_pinned_so_the_split_never_changes():
    # Pinned values: a change here silently moves documents between train and held-out in running swarms.
    assert heldout_score("") == pytest.approx(0.8931675160897388, abs=1e-15)
    assert heldout_score("The quick brown fox.") == pytest.approx(0.35913974520445796, abs=1e-15)
    assert heldout_score("naïve café") == pytest.approx(0.6873448404023341, abs=1e-15)


def test_heldout_fraction_is_respected():
    texts = [f"document number {i}" for i in range(20000)]
    share = sum(is_heldout(t, 0.05) for t in texts) / len(texts)
    assert abs(share - 0.05) < 0.006
    assert all(is_heldout(t, 0.05) == (heldout_score(t) < 0.05) for t in texts[:100])


def test_seed_from_bytes_is_stable_and_spread():
    assert seed_from_bytes(b"peer-public-key") == seed_from_bytes(bytearray(b"peer-public-key"))
    assert seed_from_bytes(b"peer-public-key") == 8814438135630775835
    seeds = {seed_from_bytes(bytes([i]) + b"key") for i in range(256)}
    assert len(seeds) == 256 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(0, 1, "blocks") != derive_seed(0, 1, "sop") != derive_seed(1, 0, "sop")


def test_buffer_shuffle_permutes_deterministically():
    items = list(range(1000))
    a = list(buffer_shuffle(items, 64, seed=1))
    assert sorted(a) == items and a != items
    assert a == list(buffer_shuffle(items, 64, seed=1))
    assert a != list(buffer_shuffle(items, 64, seed=2))
    assert list(buffer_shuffle(items, 1, seed=1)) == items


def test_buffer_shuffle_holds_at_most_buffer_size_items():
    consumed = 0

    def source():
        nonlocal consumed
        for i in range(10_000):
            consumed += 1
            yield i

    it = buffer_shuffle(source(), 100, seed=0)
    for produced in range(1, 500):
        next(it)
        assert consumed - produced <= 100
