"""The pure arithmetic of presence figures (tracks.presence.figures): no store, no event loop."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from tracks.presence.figures import (
    MAX_OPEN_MS,
    Visit,
    bucket_value,
    day_from_text,
    day_text,
    duration_bucket,
    histogram,
    peak,
    percentile,
    percentiles,
    visits,
)


@given(st.integers(min_value=1, max_value=10**10))
def test_a_bucket_stands_for_its_durations_within_one_percent(duration: int) -> None:
    # Half a bucket (1.02 ** 0.5 - 1 < 1 %) plus rounding to a whole ms.
    assert abs(bucket_value(duration_bucket(duration)) - duration) <= 0.00995 * duration + 0.5


@given(st.lists(st.integers(min_value=0, max_value=10**8), min_size=1, max_size=200))
def test_percentiles_are_nearest_rank_within_one_percent(values: list[int]) -> None:
    buckets: dict[int, int] = {}
    for value in values:
        buckets[duration_bucket(value)] = buckets.get(duration_bucket(value), 0) + 1
    ordered = sorted(values)
    for percent in (50, 90):
        exact = ordered[max(math.ceil(percent * len(values) / 100), 1) - 1]
        got = percentile(buckets, percent)
        assert got is not None
        assert abs(got - exact) <= 0.00995 * exact + 0.5


@given(
    st.dictionaries(st.integers(min_value=0, max_value=900), st.integers(1, 50), max_size=60),
    st.lists(st.integers(min_value=0, max_value=100), max_size=5),
)
def test_percentiles_are_the_nearest_rank_bucket(
    buckets: dict[int, int], percents: list[int]
) -> None:
    expanded = sorted(bucket_value(b) for b, n in buckets.items() for _ in range(n))
    expected = [
        expanded[max(-(-p * len(expanded) // 100), 1) - 1] if expanded else None
        for p in percents
    ]
    assert percentiles(buckets, percents) == expected
    assert [percentile(buckets, p) for p in percents] == expected


def test_empty_percentile_and_histogram() -> None:
    assert percentile({}, 50) is None
    assert percentiles({}, (50, 90)) == [None, None]
    assert [bin["count"] for bin in histogram({})] == [0] * 9
    assert histogram({duration_bucket(45_000): 2})[2] == {"le_ms": 60_000, "count": 2}


def test_days() -> None:
    assert day_text(day_from_text("2024-05-01")) == "2024-05-01"
    assert day_from_text("1970-01-02") == 1


def test_peak_ends_before_starts_and_counts_a_session_once() -> None:
    back_to_back = [Visit(1, 5, 0, 10), Visit(2, 6, 10, 20)]
    assert peak(back_to_back, 0, 100) == (1, 1)
    same_session_twice = [Visit(1, 5, 0, 10), Visit(1, 5, 5, 15)]  # a takeover overlap
    assert peak(same_session_twice, 0, 100) == (1, 1)
    two_tabs = [Visit(1, 5, 0, 10), Visit(2, 5, 5, 15), Visit(3, None, 6, 7)]
    assert peak(two_tabs, 0, 100) == (3, 1)
    assert peak(two_tabs, 10, 100) == (1, 1)  # clipped to the window


def test_visits_pair_joins_with_leaves_and_cap_open_ones() -> None:
    joins = [(1, 5, 100), (1, 5, 500), (2, 6, 1000)]
    leaves = [(1, 5, 300, 200)]
    got = sorted(visits(joins, leaves, now_ms=10**9), key=lambda v: (v.start, v.session))
    assert got == [
        Visit(1, 5, 100, 301),  # paired by its start; holds its leave's millisecond
        Visit(1, 5, 500, 500 + MAX_OPEN_MS),  # never left: open for at most a day
        Visit(2, 6, 1000, 1000 + MAX_OPEN_MS),
    ]
    assert visits([(1, 5, 100), (1, 5, 150)], [], now_ms=120) == [Visit(1, 5, 100, 120)]


def test_sessions_present_in_the_same_millisecond_count_as_together() -> None:
    # Both joined at 1,000; one left in the same millisecond (duration 0), the other later.
    joins = [(1, 5, 1_000), (2, 6, 1_000)]
    leaves = [(1, 5, 1_000, 0), (2, 6, 1_004, 4)]
    assert peak(visits(joins, leaves, now_ms=10**9), 0, 10**9) == (2, 2)
    assert peak(visits(joins[:1], leaves[:1], now_ms=10**9), 0, 10**9) == (1, 1)
    # One left in the millisecond the other joined in: the clock cannot tell them apart.
    handover = visits([(1, 5, 999), (2, 6, 1_000)], [(1, 5, 1_000, 1)], now_ms=2_000)
    assert peak(handover, 0, 2_000) == (2, 2)
    # A millisecond apart, they were not.
    apart = visits([(1, 5, 998), (2, 6, 1_000)], [(1, 5, 999, 1)], now_ms=2_000)
    assert peak(apart, 0, 2_000) == (1, 1)
