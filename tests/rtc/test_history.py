"""SessionHistory remembers every session's end exactly, whatever its ids, in packed form."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtc.history import RecentEnd, SessionHistory

ids = st.integers(min_value=-(2**70), max_value=2**70)
clocks = st.none() | st.integers(min_value=-5, max_value=2**80)
times = st.integers(min_value=0, max_value=2**50)


@given(st.tuples(ids, ids, ids), times, st.booleans(), clocks)
def test_an_end_comes_back_as_it_was_noted(
    key: tuple[int, int, int], now_ms: int, abnormal: bool, clock: int | None
) -> None:
    history = SessionHistory()
    history.note_end(key, now_ms, abnormal=abnormal, awareness_clock=clock)
    assert history.previous_end(key, now_ms) == RecentEnd(now_ms, abnormal, clock)


@given(st.lists(st.tuples(ids, ids, ids), min_size=2, max_size=20, unique=True))
def test_distinct_sessions_never_share_an_entry(keys: list[tuple[int, int, int]]) -> None:
    history = SessionHistory()
    for index, key in enumerate(keys):
        history.note_end(key, 1_000, abnormal=False, awareness_clock=index)
        assert history.note_blocked(key, 1_000)
    for index, key in enumerate(keys):
        assert history.previous_end(key, 1_000) == RecentEnd(1_000, False, index)
        assert not history.note_blocked(key, 1_000)  # one block each


def test_ends_expire_by_age_and_by_count() -> None:
    history = SessionHistory(ends_memory_ms=1_000, max_entries=2)
    for session in (1, 2, 3):
        history.note_end((7, 42, session), 10_000 + session, abnormal=True)
    assert history.previous_end((7, 42, 1), 10_003) is None  # the oldest of three went
    assert history.previous_end((7, 42, 3), 10_003) == RecentEnd(10_003, True)
    assert history.previous_end((7, 42, 3), 11_004) is None  # older than a second
