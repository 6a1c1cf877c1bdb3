"""peer.swarm.donors: which donors a joiner asks, in which order, and for which tensor ranges."""

from __future__ import annotations

import hashlib

from peer.swarm.donors import donor_order, newest_donors, runs, split_by_bytes


def test_only_the_donors_of_the_newest_state_are_asked_never_ourselves():
    declared = {b"a": 7.0, b"b": 7.0, b"c": 6.5, b"me": 9.0, b"d": 0.0}
    assert sorted(newest_donors(declared, b"me")) == [b"a", b"b"]
    assert newest_donors({b"me": 3.0}, b"me") == []
    assert newest_donors({}, b"me") == []


def test_each_joiner_has_its_own_fixed_donor_order_and_joiners_start_at_different_donors():
    donors = [f"donor{i}".encode() for i in range(4)]
    joiners = [hashlib.sha256(f"joiner{j}".encode()).digest() for j in range(16)]
    orders = [donor_order(j, donors) for j in joiners]
    assert all(sorted(order) == sorted(donors) for order in orders)
    assert donor_order(joiners[0], reversed(donors)) == orders[0]  # the order is the joiner's, not the listing's
    firsts = {order[0] for order in orders}
    assert len(firsts) >= 3  # fixed inputs: sha256 spreads these 16 joiners over at least 3 of the 4 donors


def test_ranges_are_contiguous_non_empty_cover_every_tensor_and_hold_near_equal_bytes():
    sizes = [4096] * 30 + [100, 50, 8]
    for parts in (1, 2, 3, 4, 7):
        ranges = split_by_bytes(sizes, parts)
        assert len(ranges) == parts
        assert ranges[0][0] == 0 and ranges[-1][1] == len(sizes)
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert all(stop > start for start, stop in ranges)
        share = sum(sizes) / parts
        assert all(abs(sum(sizes[s:e]) - share) <= 4096 for s, e in ranges), (parts, ranges)


def test_more_parts_than_tensors_and_uneven_tensors_still_give_one_tensor_per_range():
    assert split_by_bytes([10, 20], 5) == [(0, 1), (1, 2)]
    assert split_by_bytes([1000, 1, 1, 1], 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert split_by_bytes([1, 1, 1, 1000], 2) == [(0, 3), (3, 4)]
    assert split_by_bytes([], 3) == []


def test_missing_tensors_become_contiguous_ranges():
    assert runs([7, 3, 4, 5, 9, 8]) == [(3, 6), (7, 10)]
    assert runs([]) == []
