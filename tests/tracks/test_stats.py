"""Presence figures against hand-computed expectations, through the `StatsStore` interface.

The same events are answered from raw events only, from rollups only, from rollups plus the
raw events since (stored out of order, aggregated part way), and after pruning: every
answer must equal the hand-computed one. The interface tests take a `Backend` (how to store
events and open the `StatsStore` over them), one per store: SQLite and PostgreSQL (a fresh
database per test), with the same expectations.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.postgresql_fixtures import create_database, drop_database, write_postgresql
from tests.tracks.tracks_testing import TIMEOUT
from tracks import Event
from tracks.cli import main
from tracks.presence import rollup
from tracks.presence.figures import day_of
from tracks.presence.postgresql import PostgresStatsStore
from tracks.presence.sqlite import SqliteStatsStore
from tracks.presence.sqlite_schema import connect, insert_events
from tracks.presence.stats import (
    FIRST_DAY,
    LAST_DAY,
    MAX_CODE_LENGTH,
    MAX_ERROR_CODES,
    OTHER_CODES,
    QueryCancelledError,
    Scope,
    StatsStore,
    bounded_codes,
    parse_day,
)
from tracks.presence.stores import open_stats_store

_POSTGRES_URL: ContextVar[str] = ContextVar("postgres_url")

MIN = 60_000
HOUR = 60 * MIN
A = day_of(int(datetime(2024, 5, 1, tzinfo=UTC).timestamp() * 1000))  # Wed 2024-05-01
B = A + 1
NOW = (B + 2) * 86_400_000 + 12 * HOUR


def at(day: int, hour: int, minute: int = 0) -> int:
    return day * 86_400_000 + hour * HOUR + minute * MIN


def story() -> list[Event]:
    events: list[Event] = []

    def visit(blog: int, post: int, session: int, user: int, start: int, end: int,
              *, reconnect: bool = False, clean: bool = True) -> None:
        events.append(Event("jetpack_rtc_join", {
            "blog_id": blog, "post_id": post, "session_id": session, "wp_user_id": user,
            "contributors": [user], "reconnect": True if reconnect else None,
        }, ts=start))
        events.append(Event("jetpack_rtc_leave", {
            "blog_id": blog, "post_id": post, "session_id": session, "wp_user_id": user,
            "duration_ms": end - start, "clean": clean, "updates": 0,
        }, ts=end))

    # Post 1/10, day A: user 5 in two tabs (s1, s2); user 6 (s7) joins while both are open.
    visit(1, 10, 1, 5, at(A, 10), at(A, 11))
    visit(1, 10, 2, 5, at(A, 10, 30), at(A, 10, 45))
    visit(1, 10, 7, 6, at(A, 10, 40), at(A, 10, 50))
    # A session spanning midnight.
    visit(1, 10, 3, 6, at(A, 23, 30), at(B, 0, 30))
    # Day B: s1 comes back (a reconnect of the same Y.Doc: still one session).
    visit(1, 10, 1, 5, at(B, 9), at(B, 9, 10), reconnect=True)
    # s4 drops (abnormal) and reconnects with the same session id.
    visit(1, 10, 4, 7, at(B, 12), at(B, 12, 5), clean=False)
    events.append(Event("jetpack_rtc_connection_error", {
        "blog_id": 1, "post_id": 10, "session_id": 4, "wp_user_id": 7,
        "error_code": "abnormal-closure", "close_code": 1006,
    }, ts=at(B, 12, 5)))
    visit(1, 10, 4, 7, at(B, 12, 6), at(B, 12, 20), reconnect=True)
    # Post 1/11: the same session id 1 in another post is another session (user 8).
    visit(1, 11, 1, 8, at(A, 10, 10), at(A, 10, 20))
    events.append(Event("jetpack_rtc_blocked", {
        "blog_id": 1, "post_id": 11, "session_id": 9, "wp_user_id": 9,
        "limit": 1, "limit_kind": "contributors",
    }, ts=at(A, 10, 15)))
    # Blog 2, post 20: user 5 again; a refused token.
    visit(2, 20, 5, 5, at(B, 8), at(B, 8, 30))
    events.append(Event("jetpack_rtc_connection_error", {
        "blog_id": 2, "post_id": 20, "error_code": "authentication-failed", "close_code": 4401,
    }, ts=at(B, 9)))
    return events


def durations(p50: int, p90: int) -> dict[str, int]:
    return {"p50": p50, "p90": p90}


EXPECTED_DAY_A: dict[str, Any] = {
    "day": "2024-05-01", "joins": 5, "unique_sessions": 5, "unique_users": 3,
    "unique_posts": 2, "sessions_per_user": 1.667, "peak_concurrent_sessions": 3,
    "peak_concurrent_users": 2,
    # Leaves on A: 10 min (s7), 10 min (1/11), 15 min (s2), 60 min (s1).
    "session_duration_ms": durations(10 * MIN, 60 * MIN),
    "blocked": 1, "blocked_rate": round(1 / 6, 4), "connection_errors_by_code": {},
}
EXPECTED_DAY_B: dict[str, Any] = {
    "day": "2024-05-02", "joins": 4, "unique_sessions": 3, "unique_users": 2,
    "unique_posts": 2, "sessions_per_user": 1.5,
    # s3 is still there from 00:00 to 00:30 without joining on B; one at a time all day.
    "peak_concurrent_sessions": 1, "peak_concurrent_users": 1,
    # Leaves on B: 5, 10, 14, 30, 60 (s3, across midnight) minutes.
    "session_duration_ms": durations(14 * MIN, 60 * MIN),
    "blocked": 0, "blocked_rate": 0.0,
    "connection_errors_by_code": {"abnormal-closure": 1, "authentication-failed": 1},
}
EXPECTED: dict[str, Any] = {
    "joins": 9,
    # (1,10,1) (1,10,2) (1,10,3) (1,10,4) (1,10,7) (1,11,1) (2,20,5): s1's return and s4's
    # reconnect are the same sessions; session 1 of post 11 is another one.
    "unique_sessions": 7,
    "unique_users": 4,  # 5, 6, 7, 8 (9 was blocked, never joined)
    "unique_posts": 3,
    "sessions_per_user": 1.75,
    "peak_concurrent_sessions": 3,  # 1/10 at 10:40 on A: s1, s2, s7
    "peak_concurrent_users": 2,  # users 5 (two tabs) and 6
    # Nine leaves: 5, 10, 10, 10, 14, 15, 30, 60, 60 min; nearest rank 5 and 9.
    "session_duration_ms": durations(14 * MIN, 60 * MIN),
    "blocked": 1,
    "blocked_rate": 0.125,  # 1 / (7 + 1)
    "connection_errors_by_code": {"abnormal-closure": 1, "authentication-failed": 1},
    "daily": [EXPECTED_DAY_A, EXPECTED_DAY_B],
    "top_posts": [
        {"blog_id": 1, "post_id": 10, "unique_sessions": 5},
        {"blog_id": 1, "post_id": 11, "unique_sessions": 1},
        {"blog_id": 2, "post_id": 20, "unique_sessions": 1},
    ],
}


def close_to(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Equal, except that duration percentiles may be off by 1 % (bucketed)."""
    actual, expected = json.loads(json.dumps(actual)), json.loads(json.dumps(expected))
    days = zip(actual.get("daily", []), expected.get("daily", []), strict=True)
    for figures, wanted in [(actual, expected), *days]:
        got = figures.pop("session_duration_ms")
        want = wanted.pop("session_duration_ms")
        for key in ("p50", "p90"):
            assert got[key] == pytest.approx(want[key], rel=0.01), key
    assert actual == expected


def write(path: Path, events: Iterable[Event]) -> None:
    connection = connect(path)
    try:
        insert_events(connection, events)
    finally:
        connection.close()


@dataclass(frozen=True, slots=True)
class Backend:
    """One kind of store under the interface tests."""

    write: Callable[[Iterable[Event]], None]
    """Store events (the store exists once this was called, even with none)."""
    open: Callable[[], StatsStore]
    """A `StatsStore` over what was written; the caller closes it."""


def sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "events.sqlite"
    return Backend(write=lambda events: write(path, events), open=lambda: SqliteStatsStore(path))


def postgresql_backend(url: str) -> Backend:
    return Backend(write=lambda events: write_postgresql(url, events),
                   open=lambda: PostgresStatsStore(url))


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "sqlite": sqlite_backend,
    "postgresql": lambda _: postgresql_backend(_POSTGRES_URL.get()),
}


@pytest.fixture(params=[
    pytest.param(name, marks=pytest.mark.slow) if name == "postgresql" else name
    for name in sorted(BACKENDS)
])  # a database created and dropped per test: slow
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param != "postgresql":
        yield BACKENDS[request.param](tmp_path)
        return
    url = create_database()
    token = _POSTGRES_URL.set(url)
    try:
        yield BACKENDS[request.param](tmp_path)
    finally:
        _POSTGRES_URL.reset(token)
        drop_database(url)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite"


def answer(backend: Backend, scope: Scope | None = None, *, now_ms: int = NOW) -> dict[str, Any]:
    with backend.open() as store:
        return dict(store.stats(scope or Scope(since_day=A, until_day=B), now_ms=now_ms))


def aggregate(backend: Backend, *, now_ms: int = NOW) -> int:
    with backend.open() as store:
        return store.aggregate(now_ms=now_ms)


# --- the interface: every store passes these ---------------------------------------


def test_raw_events_only(backend: Backend) -> None:
    backend.write(story())
    close_to(answer(backend), EXPECTED)


def test_rollups_only(backend: Backend) -> None:
    backend.write(story())
    assert aggregate(backend) == len(story())
    assert aggregate(backend) == 0  # nothing new
    close_to(answer(backend), EXPECTED)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rollups_plus_raw_events_out_of_order(backend: Backend, seed: int) -> None:
    events = story()
    random.Random(seed).shuffle(events)
    thirds = len(events) // 3
    backend.write(events[:thirds])
    with backend.open() as store:
        store.aggregate(now_ms=NOW)
        backend.write(events[thirds : 2 * thirds])
        store.aggregate(now_ms=NOW)
        backend.write(events[2 * thirds :])
    close_to(answer(backend), EXPECTED)
    aggregate(backend)
    close_to(answer(backend), EXPECTED)


def test_each_event_aggregated_on_its_own(backend: Backend) -> None:
    backend.write([])
    with backend.open() as store:
        for event in story():
            backend.write([event])
            store.aggregate(now_ms=NOW)
    close_to(answer(backend), EXPECTED)


def test_aggregate_in_small_chunks(backend: Backend) -> None:
    backend.write(story())
    with backend.open() as store:
        assert store.aggregate(now_ms=NOW, chunk=2) == len(story())
    close_to(answer(backend), EXPECTED)


@pytest.mark.parametrize("aggregated", [False, True])
def test_scopes(backend: Backend, aggregated: bool) -> None:
    backend.write(story())
    if aggregated:
        aggregate(backend)
    blog = answer(backend, Scope(blog_id=1, since_day=A, until_day=B))
    assert (blog["joins"], blog["unique_sessions"], blog["unique_users"]) == (8, 6, 4)
    assert (blog["unique_posts"], blog["blocked"], blog["blocked_rate"]) == (2, 1, 0.1429)
    assert blog["connection_errors_by_code"] == {"abnormal-closure": 1}
    assert [p["post_id"] for p in blog["top_posts"]] == [10, 11]
    post = answer(backend, Scope(blog_id=1, post_id=10, since_day=A, until_day=B))
    assert (post["joins"], post["unique_sessions"], post["unique_users"]) == (7, 5, 3)
    assert (post["unique_posts"], post["blocked"], post["peak_concurrent_sessions"]) == (1, 0, 3)
    day_b = answer(backend, Scope(since_day=B, until_day=B))
    close_to(
        {k: v for k, v in day_b.items() if k not in ("top_posts", "daily")},
        {k: v for k, v in EXPECTED_DAY_B.items() if k != "day"},
    )
    other_blog = answer(backend, Scope(blog_id=2, since_day=A, until_day=A))
    assert other_blog["joins"] == other_blog["unique_users"] == 0
    assert other_blog["top_posts"] == []


@pytest.mark.parametrize("aggregated", [False, True])
def test_open_ended_range_starts_at_the_first_event(backend: Backend, aggregated: bool) -> None:
    backend.write(story())
    if aggregated:
        aggregate(backend)
    figures = answer(backend, Scope(), now_ms=at(B, 23))
    assert [day["day"] for day in figures["daily"]] == ["2024-05-01", "2024-05-02"]
    close_to({**figures, "daily": []}, {**EXPECTED, "daily": []})


def test_a_session_seen_in_the_rollups_counts_once(backend: Backend) -> None:
    """Raw joins of an entity the rollups hold add no distinct count (day or range)."""
    events = story()
    backend.write(events)
    aggregate(backend)
    # s1 of post 1/10 (user 5) joins again on day B: rolled up there already.
    backend.write([Event("jetpack_rtc_join", {
        "blog_id": 1, "post_id": 10, "session_id": 1, "wp_user_id": 5, "reconnect": True,
    }, ts=at(B, 15))])
    figures = answer(backend)
    assert (figures["joins"], figures["unique_sessions"], figures["unique_users"]) == (10, 7, 4)
    day_b = figures["daily"][1]
    assert (day_b["joins"], day_b["unique_sessions"], day_b["unique_users"]) == (5, 3, 2)
    assert figures["top_posts"][0] == {"blog_id": 1, "post_id": 10, "unique_sessions": 5}


def test_prune_keeps_the_figures(backend: Backend) -> None:
    backend.write(story())
    later = NOW + 100 * 86_400_000
    with backend.open() as store:
        store.aggregate(now_ms=later)
        assert store.prune(before_ms=later - 90 * 86_400_000) == len(story())
    close_to(answer(backend, now_ms=later), EXPECTED)


def test_prune_keeps_events_not_rolled_up(backend: Backend) -> None:
    backend.write(story())
    with backend.open() as store:
        assert store.prune(before_ms=NOW) == 0
    close_to(answer(backend), EXPECTED)


def test_open_session_counts_until_now(backend: Backend) -> None:
    join = Event("jetpack_rtc_join", {"blog_id": 1, "post_id": 1, "session_id": 1,
                                      "wp_user_id": 1}, ts=at(A, 23))
    other = Event("jetpack_rtc_join", {"blog_id": 1, "post_id": 1, "session_id": 2,
                                       "wp_user_id": 2}, ts=at(B, 1))
    backend.write([join])
    now = at(B, 0, 10)
    with backend.open() as store:
        store.aggregate(now_ms=at(A, 23, 30))
        # Past midnight with no new event: the open session is still there on day B.
        figures = dict(store.stats(Scope(since_day=B, until_day=B), now_ms=now))
        assert figures["peak_concurrent_sessions"] == 1
        backend.write([other])
        figures = dict(store.stats(Scope(since_day=B, until_day=B), now_ms=at(B, 2)))
        assert (figures["peak_concurrent_sessions"], figures["peak_concurrent_users"]) == (2, 2)
        store.aggregate(now_ms=at(B, 2))
        assert dict(store.stats(Scope(since_day=B, until_day=B), now_ms=at(B, 2))) == figures


def test_only_posts_with_a_join_no_leave_closed_stay_open_past_midnight(
    backend: Backend,
) -> None:
    def join(post: int, session: int, ts: int) -> Event:
        return Event("jetpack_rtc_join", {"blog_id": 7, "post_id": post, "session_id": session,
                                          "wp_user_id": session}, ts=ts)

    def leave(post: int, session: int, ts: int, duration: object) -> Event:
        return Event("jetpack_rtc_leave", {"blog_id": 7, "post_id": post, "session_id": session,
                                           "wp_user_id": session, "duration_ms": duration},
                     ts=ts)

    backend.write([
        join(42, 1, at(A, 20)), leave(42, 1, at(A, 21), HOUR),  # closed: its join at 20:00
        join(42, 2, at(A, 22)),  # never left: post 42 stays open
        join(43, 3, at(A, 22)), leave(43, 3, at(A, 23), 30 * MIN),  # closes a join at 22:30
        join(44, 4, at(A, 22)), leave(44, 4, at(A, 23), 60 * MIN),  # closed
        join(45, 5, at(A, 22)), leave(45, 5, at(A, 23), "junk"),  # no duration: not this join
    ])
    with backend.open() as store:
        store.aggregate(now_ms=at(A, 23, 30))
        # Day B, with no new event: only the posts with a join still open have a peak.
        peaks = {
            post: dict(store.stats(Scope(since_day=B, until_day=B, blog_id=7, post_id=post),
                                   now_ms=at(B, 1)))["peak_concurrent_sessions"]
            for post in (42, 43, 44, 45)
        }
    assert peaks == {42: 1, 43: 1, 44: 0, 45: 1}


def test_close_is_idempotent(backend: Backend) -> None:
    backend.write(story())
    store = backend.open()
    store.close()
    store.close()


# --- SQLite only: JSONL stores, the CLI -----------------------------------------------


def test_jsonl_store(tmp_path: Path) -> None:
    """A JSONL store is answered through an in-memory SQLite copy."""
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(event.to_json()) + "\n" for event in story()))
    with open_stats_store(path) as store:
        close_to(dict(store.stats(Scope(since_day=A, until_day=B), now_ms=NOW)), EXPECTED)


def test_parse_day() -> None:
    assert parse_day("2024-05-01", now_ms=NOW) == A
    assert parse_day("7d", now_ms=NOW) == day_of(NOW) - 6
    assert parse_day("24h", now_ms=NOW) == day_of(NOW)
    assert parse_day("1d", now_ms=NOW, until=True) == day_of(NOW) - 1
    assert parse_day(str(at(B, 0)), now_ms=NOW, until=True) == A
    with pytest.raises(ValueError, match="bad day"):
        parse_day("soon", now_ms=NOW)


def test_cli_report_formats(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(store_path, story())
    assert main(["aggregate", str(store_path)]) == 0
    assert "rolled up 21 events" in capsys.readouterr().out
    span = ["--since", "2024-05-01", "--until", "2024-05-02"]
    assert main(["report", str(store_path), *span, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    close_to(data, EXPECTED)
    assert main(["report", str(store_path), *span, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("day,joins,unique_sessions,unique_users,unique_posts")
    assert lines[1].startswith("2024-05-01,5,5,3,2,1.667,3,2,")
    assert lines[-1].startswith("total,9,7,4,3,1.75,3,2,")
    assert main(["report", str(store_path), *span]) == 0
    out = capsys.readouterr().out
    assert "unique_sessions: 7" in out
    assert "1/10: 5" in out


def test_cli_prune(store_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(store_path, story())
    assert main(["prune", str(store_path), "--older-than", "90d"]) == 0
    assert "deleted 21 raw events" in capsys.readouterr().out  # 2024 is long ago
    assert main(["report", str(store_path), "--since", "2024-05-01", "--until", "2024-05-02",
                 "--json"]) == 0
    close_to(json.loads(capsys.readouterr().out), EXPECTED)
    assert main(["prune", str(store_path), "--older-than", "1d"]) == 2
    assert "at least 2d" in capsys.readouterr().err


# --- bounds (issue 12, items 3 and 11) --------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "²²²²²²²²²²²",  # str.isdigit() says yes, int() says no
        "²",
        "99999999999d",
        "99999999d",  # before year 1
        "-5",
        "99999999999999999999999",
        "9" * 5000,
        "10000-01-01",
        "\uff12\uff10\uff12\uff14-05-01",  # fullwidth digits
    ],
)
def test_parse_day_refuses_absurd_days_with_one_line(text: str) -> None:
    with pytest.raises(ValueError, match=r"^bad day") as caught:
        parse_day(text, now_ms=NOW)
    assert len(str(caught.value)) < 160
    with pytest.raises(ValueError, match=r"^bad day"):
        parse_day(text, now_ms=NOW, until=True)


def test_scope_days_stay_within_years_1_to_9999() -> None:
    assert parse_day("0001-01-01", now_ms=NOW) == FIRST_DAY
    assert parse_day("9999-12-31", now_ms=NOW) == LAST_DAY
    with pytest.raises(ValueError, match="within"):
        Scope(since_day=LAST_DAY + 1)


def test_bounded_scope() -> None:
    today = day_of(NOW)
    scope = Scope(blog_id=1, since_day=today - 399)
    assert scope.bounded(max_days=400, today=today) == scope
    with pytest.raises(ValueError, match=r"is 401 days; stats answer at most 400 days"):
        Scope(since_day=today - 400).bounded(max_days=400, today=today)
    with pytest.raises(ValueError, match="at most 400 days"):
        Scope(since_day=FIRST_DAY, until_day=LAST_DAY).bounded(max_days=400, today=today)
    # An open since: the max_days days that end at until (today when open too).
    assert Scope().bounded(max_days=5, today=today) == Scope(since_day=today - 4)
    assert Scope(until_day=A).bounded(max_days=5, today=today) == Scope(
        since_day=A - 4, until_day=A
    )
    # A range that ends before it begins is empty, not refused.
    backwards = Scope(since_day=B, until_day=A)
    assert backwards.bounded(max_days=1, today=today) == backwards


def test_error_codes_are_bounded() -> None:
    codes = {f"code-{index:03d}": 1000 - index for index in range(100)}
    codes["x" * 500] = 5000
    codes["x" * 400] = 1
    bounded = dict(bounded_codes(codes))
    assert len(bounded) == MAX_ERROR_CODES
    assert all(len(code) <= MAX_CODE_LENGTH for code in bounded)
    assert sum(bounded.values()) == sum(codes.values())
    assert bounded["x" * (MAX_CODE_LENGTH - 3) + "..."] == 5001  # the two long ones
    assert bounded[OTHER_CODES] == sum(1000 - index for index in range(MAX_ERROR_CODES - 2, 100))
    assert bounded_codes({"b": 1, "a": 1, "c": 2}) == [("c", 2), ("a", 1), ("b", 1)]


@pytest.mark.parametrize("aggregated", [False, True])
def test_days_start_at_the_first_day_with_data(backend: Backend, aggregated: bool) -> None:
    backend.write(story())
    if aggregated:
        aggregate(backend)
    figures = answer(backend, Scope(since_day=A - 30, until_day=B))
    assert [day["day"] for day in figures["daily"]] == ["2024-05-01", "2024-05-02"]
    close_to(figures, EXPECTED)
    # Since after the first day with data: the range as asked.
    assert [day["day"] for day in answer(backend, Scope(since_day=B, until_day=B + 1))[
        "daily"]] == ["2024-05-02", "2024-05-03"]


def test_an_empty_store_has_no_days(backend: Backend) -> None:
    """It answered 20,000 empty days from 1970 (5.6 MB of JSON) before any rollup."""
    backend.write([])
    assert answer(backend, Scope())["daily"] == []
    aggregate(backend)
    assert answer(backend, Scope())["daily"] == []
    assert answer(backend, Scope(since_day=A, until_day=B))["daily"] == []


def test_an_interrupted_query_stops(backend: Backend) -> None:
    backend.write(story())
    with backend.open() as store:
        store.interrupt()
        with pytest.raises(QueryCancelledError):
            store.stats(Scope(), now_ms=NOW)


def test_an_interrupt_stops_a_running_statement(store_path: Path) -> None:
    """SQLite stops mid-statement: the progress handler sees the flag."""
    write(store_path, story())
    with SqliteStatsStore(store_path) as store:
        started = threading.Event()
        reader = store._reader  # the statement below stands in for a long stats query

        def mark_started() -> int:
            started.set()
            return 1

        reader.create_function("started", 0, mark_started)

        def interrupt() -> None:
            assert started.wait(TIMEOUT)
            store.interrupt()

        thread = threading.Thread(target=interrupt)
        thread.start()
        try:
            with pytest.raises(sqlite3.OperationalError, match="interrupted"):
                # Seconds of counting unless interrupted.
                reader.execute(
                    "WITH RECURSIVE n(x) AS (SELECT started() UNION ALL SELECT x + 1 FROM n"
                    " WHERE x < 10000000) SELECT COUNT(*) FROM n"
                ).fetchone()
        finally:
            thread.join(TIMEOUT)
        with pytest.raises(QueryCancelledError):
            store.stats(Scope(), now_ms=NOW)


def test_a_rollup_reads_without_holding_the_write_lock_and_a_concurrent_run_counts_once(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a rollup reads and computes (the long part), events are written at once; a
    second rollup run meanwhile folds the same events, and the first then writes nothing of
    its own: every figure is counted once."""
    write(store_path, story())
    compute = rollup.compute_peaks
    calls: list[int] = []
    interleaved: list[int] = []

    def meanwhile(
        connection: sqlite3.Connection, touched: Any, *, now_ms: int
    ) -> dict[tuple[int, int, int], tuple[int, int]]:
        calls.append(len(calls))
        if calls == [0]:  # the first run, in its read phase
            writer = connect(store_path)
            try:
                writer.execute("PRAGMA busy_timeout=0")  # locked: fails at once
                insert_events(writer, [Event("jetpack_rtc_join", {"session_id": 1}, ts=NOW)])
            finally:
                writer.close()
            with SqliteStatsStore(store_path) as other:
                interleaved.append(other.aggregate(now_ms=NOW))
        return compute(connection, touched, now_ms=now_ms)

    monkeypatch.setattr(rollup, "compute_peaks", meanwhile)
    with SqliteStatsStore(store_path) as store:
        assert store.aggregate(now_ms=NOW) == 0  # the other run folded them
    assert interleaved == [len(story())]
    close_to(answer(sqlite_backend(store_path.parent)), EXPECTED)
