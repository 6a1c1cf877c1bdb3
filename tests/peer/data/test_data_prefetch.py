"""The background prefetcher keeps order, surfaces errors and stops its thread."""

import itertools
import threading
import time

import pytest

from peer.data import prefetch
from peer.errors import UserError


def test_same_items_same_order():
    with prefetch(iter(range(1000)), depth=4) as p:
        assert list(p) == list(range(1000))
        with pytest.raises(StopIteration):
            next(p)


def test_error_in_source_reaches_the_consumer_after_the_good_items():
    def source():
        yield 1
        yield 2
        raise UserError("corpus went away")

    with prefetch(source()) as p:
        assert next(p) == 1 and next(p) == 2
        with pytest.raises(UserError, match="corpus went away"):
            next(p)


def test_close_stops_an_endless_producer_and_bounds_read_ahead():
    produced = itertools.count()
    p = prefetch((next(produced) for _ in itertools.count()), depth=3)
    assert next(p) == 0
    time.sleep(0.2)
    assert next(produced) <= 1 + 3 + 2  # consumed + queue + one blocked in put (+ the count we just drew)
    p.close()
    assert not any(t.name == "batch-prefetch" and t.is_alive() for t in threading.enumerate())
