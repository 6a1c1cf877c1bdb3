"""The window rate of a counter and the ETA rule (``coordinator.rates``), as pure functions."""

import pytest

from coordinator.rates import CounterWindow, eta_seconds


def test_the_rate_is_the_counters_increase_over_the_last_window():
    w = CounterWindow(window=60)
    assert w.rate() is None
    w.add(0, 0)
    assert w.rate() is None  # one point is no rate
    for t in range(5, 121, 5):
        w.add(t, 10 * t if t <= 60 else 600 + 40 * (t - 60))  # 10/s for a minute, then 40/s
    assert w.rate() == pytest.approx(40.0)  # only the last 60 s count
    assert w.points[0][0] == 60


def test_bursts_average_out_and_a_stopped_counter_falls_to_zero():
    w = CounterWindow(window=30)
    for t in range(0, 31):
        w.add(t, 100 * (t // 10))  # 100 samples at once every 10 s (a global step's worth)
    assert w.rate() == pytest.approx(300 / 30)
    for t in range(31, 62):
        w.add(t, 300)  # nothing new: the peer stopped
    assert w.rate() == 0.0


def test_points_from_a_clock_that_went_back_are_ignored_and_the_window_must_be_positive():
    w = CounterWindow(window=10)
    w.add(10, 100)
    w.add(5, 0)
    w.add(20, 200)
    assert w.rate() == pytest.approx(10.0)
    with pytest.raises(ValueError):
        CounterWindow(window=0)


def test_eta_only_from_live_progress():
    steps = [(0.0, 100), (600.0, 160)]  # 0.1 step/s
    live = dict(total_steps=1000, global_step=160, alive_peers=2, updated=600.0, now=610.0, stale_after=60.0)
    assert eta_seconds(steps, **live) == pytest.approx(840 / 0.1)
    assert eta_seconds(steps, **(live | dict(alive_peers=0))) is None  # nobody trains
    assert eta_seconds(steps, **(live | dict(now=700.0))) is None  # the monitor stopped updating
    assert eta_seconds(steps, **(live | dict(updated=None))) is None
    assert eta_seconds(steps, **(live | dict(total_steps=None))) is None  # no target
    assert eta_seconds([(0.0, 160), (600.0, 160)], **live) is None  # no step in the window
    assert eta_seconds(steps[:1], **live) is None
    assert eta_seconds(steps, **(live | dict(global_step=1200))) == 0.0  # past the target
