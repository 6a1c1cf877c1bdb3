"""The soak's verdict: growth is judged on RSS and on RssAnon, so a leak that reclaim hides from RSS still fails."""

import random

import pytest

from bench.faultlib.soak import Series, fitted_growth, growth_of, jittered, series_from_csv

MIB = 2**20


def _series(name: str, rss: list[int], anon: list[int]) -> Series:
    times = [float(t) for t in range(len(rss))]
    return Series(name, times=times, rss=[r * MIB for r in rss], anon=[a * MIB for a in anon])


def test_flat_memory_passes_and_reports_both_figures():
    (growth,) = growth_of({"p": _series("p", [100] * 9, [60] * 9)}, start=0, end=8, window=2)
    assert (growth.first_mib, growth.last_mib, growth.growth) == (100, 100, 0)
    assert (growth.anon_first_mib, growth.anon_last_mib, growth.anon_growth) == (60, 60, 0)
    assert growth.passed


def test_anonymous_growth_fails_even_when_reclaim_keeps_rss_flat():
    # file pages dropped by reclaim (RSS flat) while anonymous memory grows 10 %: a leak, and the soak must say so
    rss = [100] * 9
    anon = [60, 60, 60, 61, 62, 64, 66, 66, 66]
    (growth,) = growth_of({"p": _series("p", rss, anon)}, start=0, end=8, window=2)
    assert abs(growth.growth) < 1e-9
    assert abs(growth.anon_growth - 0.1) < 1e-9
    assert not growth.passed


def test_processes_that_did_not_live_through_the_soak_are_left_out():
    short = Series("fork", times=[5.0, 6.0, 7.0, 8.0], rss=[MIB] * 4, anon=[MIB] * 4)
    assert growth_of({"fork": short}, start=0, end=8, window=2) == []


def test_a_one_time_step_inside_the_warm_up_is_not_growth_but_one_after_it_is():
    # the coordinator's first checkpoint pull: 206 -> 325 MiB at t=1, flat after
    stepped = _series("coordinator", [206] + [325] * 8, [206] + [325] * 8)
    (no_warmup,) = growth_of({"c": stepped}, start=0, end=8, window=2)
    (warmed,) = growth_of({"c": stepped}, start=0, end=8, window=2, warmup=1)
    assert not no_warmup.passed and warmed.passed and warmed.growth == 0.0
    # a step after the warm-up still fails
    late = _series("coordinator", [325] * 5 + [400] * 4, [325] * 5 + [400] * 4)
    (late_growth,) = growth_of({"c": late}, start=0, end=8, window=2, warmup=1)
    assert not late_growth.passed


def test_a_finished_runs_csv_gives_back_the_same_series(tmp_path):
    path = tmp_path / "rss.csv"
    path.write_text("time,process,pid,rss_bytes,rss_anon_bytes\n10.0,peer0:main,7,100,60\n40.0,peer0:main,7,110,70\n")
    (series,) = series_from_csv(path).values()
    assert (series.name, series.times, series.rss, series.anon) == ("peer0:main", [10.0, 40.0], [100, 110], [60, 70])
    (tmp_path / "empty.csv").write_text("time,process,pid,rss_bytes,rss_anon_bytes\n")
    with pytest.raises(ValueError, match="holds no samples"):
        series_from_csv(tmp_path / "empty.csv")


def test_the_fitted_trend_follows_a_steady_rise_and_ignores_where_the_spikes_fall():
    steady = [100 + t for t in range(11)]  # +10 % over the span, steadily
    assert abs(fitted_growth([float(t) for t in range(11)], steady, 0, 10) - 0.1) < 1e-9
    # a flat floor with a round-sized spike every 4th sample: the last window catches one, the first none, so the
    # judged means read +10 %; the fitted trend stays under half of that
    spiky = [130 if t % 4 == 3 else 100 for t in range(21)]
    (growth,) = growth_of({"p": _series("p", spiky, spiky)}, start=0, end=20, window=2)
    assert abs(growth.anon_growth - 0.1) < 1e-9 and 0 < growth.anon_trend < 0.05
    assert fitted_growth([1.0], [5], 0, 10) == 0.0  # too few samples to fit


def _flat_but_busy(period: float, times: list[float]) -> Series:
    """A process that does not grow: 400 MiB for the first half of every ``period`` (a round in flight), else 370."""
    values = [(400 if t % period < period / 2 else 370) * MIB for t in times]
    return Series("averager", times=times, rss=values, anon=list(values))


def _hour_of_samples(gap) -> list[float]:
    times, t = [], 0.0
    while t <= 3600:
        times.append(t)
        t += gap()
    return times


@pytest.mark.parametrize("period", [15.1, 2.001])
def test_jittered_samples_read_a_flat_process_with_a_round_cycle_as_flat_where_a_fixed_clock_does_not(period):
    # a fixed clock whose interval is near a multiple of the round cycle samples one phase of it for minutes on
    # end: the first soaks' 30 s clock against a ~15 s cycle, or a 2 s clock against a ~2 s one
    clock = 30.0 if period > 10 else 2.0
    (fixed,) = growth_of({"a": _flat_but_busy(period, _hour_of_samples(lambda: clock))}, 0, 3600, 600, 300)
    assert abs(fixed.anon_growth) > 0.02
    rng = random.Random(0)
    (jittered_growth,) = growth_of(
        {"a": _flat_but_busy(period, _hour_of_samples(lambda: jittered(2.0, rng)))}, 0, 3600, 600, 300
    )
    assert abs(jittered_growth.anon_growth) < 0.005 and abs(jittered_growth.growth) < 0.005
    assert jittered_growth.anon_floor_growth == 0.0  # the floor between rounds never moved


def test_the_gaps_stay_within_half_an_interval_of_it():
    rng = random.Random(1)
    gaps = [jittered(2.0, rng) for _ in range(1000)]
    assert 1.0 <= min(gaps) < 1.1 and 2.9 < max(gaps) <= 3.0
    assert abs(sum(gaps) / len(gaps) - 2.0) < 0.05


def test_a_raised_floor_shows_in_the_floor_figure():
    # between rounds the process now holds 20 MiB more (a leak) while its rounds peak where they did
    times = [float(t) for t in range(0, 3601, 2)]
    values = [(400 if t % 12 < 6 else (370 if t < 1800 else 390)) * MIB for t in times]
    (growth,) = growth_of({"a": Series("a", times=times, rss=values, anon=list(values))}, 0, 3600, 600, 300)
    assert abs(growth.anon_floor_growth - 20 / 370) < 1e-9
