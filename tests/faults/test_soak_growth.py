"""The soak's verdict: growth is judged on RSS and on RssAnon, so a leak that reclaim hides from RSS still fails."""

from bench.faultlib.soak import Series, growth_of

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
