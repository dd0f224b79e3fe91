"""SessionHistory remembers every session's end exactly, whatever its ids, in packed form."""

from __future__ import annotations

from dataclasses import dataclass

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


def _session_keys(history: SessionHistory) -> list[tuple[int, int, int]]:
    """Six sessions whose keys share one home bucket of the history's index (long probe
    chains, so that deleting from the middle of one matters; found with the index's own
    salted hash), and two that do not."""
    home = history._ends._bucket_of
    candidates = [(2**64 - 1, 42, 2**64 - 1 - n) for n in range(10_000)]
    crammed = [key for key in candidates if home(*key) == 0][:6]
    others = [key for key in ((7, 42, n) for n in range(100)) if home(*key) != 0][:2]
    assert len(crammed) == 6
    assert len(others) == 2
    return crammed + others


@dataclass
class _Slot:
    """The model's slot: a session's end, emptied (not live) when that session ends again."""

    key: tuple[int, int, int]
    end: RecentEnd
    live: bool = True


_ops = st.lists(
    st.tuples(
        st.sampled_from(["end", "ask", "block"]),
        st.integers(min_value=0, max_value=7),  # a few sessions: the same ones come back
        st.integers(min_value=0, max_value=3),  # milliseconds since the previous step
        st.booleans(),
        st.none() | st.integers(min_value=0, max_value=2**64 - 2),
    ),
    max_size=60,
)


@given(_ops, st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=6))
def test_the_ring_remembers_what_an_ordered_table_would(
    ops: list[tuple[str, int, int, bool, int | None]], capacity: int, window_ms: int
) -> None:
    """Against a plain model (a list of slots in time order, an end noted again empties its
    old slot, the cap counts slots): every answer is the same, through wrap-arounds, index
    collisions and deletions. Session ids up to 2**64 - 1 and any clock fit the ring."""
    history = SessionHistory(ends_memory_ms=window_ms, max_entries=capacity)
    keys = _session_keys(history)
    slots: list[_Slot] = []

    def expire(now_ms: int) -> None:
        while slots and (not slots[0].live or now_ms - slots[0].end.ended_at_ms > window_ms):
            slots.pop(0)

    def remembered(key: tuple[int, int, int]) -> RecentEnd | None:
        return next((slot.end for slot in slots if slot.key == key and slot.live), None)

    now_ms = 0
    for kind, session, step_ms, abnormal, clock in ops:
        now_ms += step_ms
        key = keys[session]
        if kind == "end":
            for slot in slots:
                slot.live = slot.live and slot.key != key
            if len(slots) == capacity:
                slots.pop(0)
            slots.append(_Slot(key, RecentEnd(now_ms, abnormal, clock)))
            history.note_end(key, now_ms, abnormal=abnormal, awareness_clock=clock)
            expire(now_ms)
        elif kind == "ask":
            expire(now_ms)
            assert history.previous_end(key, now_ms) == remembered(key)
        else:
            history.note_blocked(key, now_ms)
            expire(now_ms)
    for key in keys:
        assert history.previous_end(key, now_ms) == remembered(key)
