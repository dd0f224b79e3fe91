"""The PostgreSQL stats store beyond the shared interface tests (tests/tracks/test_stats.py):
one rollup at a time across nodes, retention by partitions, cancelling a running statement.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.postgresql_fixtures import postgres_url, write_postgresql
from tests.tracks.test_stats import (
    EXPECTED,
    NOW,
    A,
    B,
    answer,
    close_to,
    postgresql_backend,
    story,
)
from tests.tracks.tracks_testing import TIMEOUT
from tracks import Event
from tracks.cli import main
from tracks.presence.figures import DAY_MS
from tracks.presence.postgresql import PostgresStatsStore
from tracks.presence.stats import QueryCancelledError, Scope
from tracks.presence.stores import open_stats_store

__all__ = ["postgres_url"]

pytestmark = pytest.mark.slow  # a database created and dropped per test

psycopg = pytest.importorskip("psycopg")


def query(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as connection:
        return list(connection.execute(sql, params).fetchall())


def wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        # Another connection's state: PostgreSQL offers this one no event to wait on.
        time.sleep(0.01)  # noqa: sleep-ok


def test_open_stats_store_answers_postgresql_urls(postgres_url: str) -> None:
    write_postgresql(postgres_url, story())
    with open_stats_store(postgres_url) as store:
        assert isinstance(store, PostgresStatsStore)
        close_to(dict(store.stats(Scope(since_day=A, until_day=B), now_ms=NOW)), EXPECTED)


def test_two_nodes_rolling_up_at_once_one_runs_the_other_skips(postgres_url: str) -> None:
    write_postgresql(postgres_url, story())
    backend = postgresql_backend(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as writer, backend.open() as first, \
            backend.open() as second:
        # A writer mid-insert holds the first run inside its rollup lock (it waits for the
        # inserts in flight to commit before it reads the newest id).
        writer.execute("BEGIN")
        writer.execute("LOCK TABLE events IN ROW EXCLUSIVE MODE")
        result: list[int] = []
        running = threading.Thread(target=lambda: result.append(first.aggregate(now_ms=NOW)))
        running.start()
        try:
            wait_until(lambda: bool(query(
                postgres_url,
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'tracks-stats'"
                " AND wait_event_type = 'Lock' AND query LIKE 'LOCK TABLE events%%'",
            )))
            started = time.monotonic()
            assert second.aggregate(now_ms=NOW) == 0  # skipped, at once
            assert time.monotonic() - started < 1
        finally:
            writer.execute("COMMIT")
            running.join(TIMEOUT)
        assert result == [len(story())]
        assert second.aggregate(now_ms=NOW) == 0  # nothing new: all rolled up once
    close_to(answer(backend), EXPECTED)


def test_concurrent_rollups_with_writes_stay_exact(postgres_url: str) -> None:
    events = story()
    write_postgresql(postgres_url, events[:5])
    backend = postgresql_backend(postgres_url)
    rolled: list[int] = []
    barrier = threading.Barrier(2, timeout=TIMEOUT)

    def node() -> None:
        with backend.open() as store:
            for _ in range(3):
                barrier.wait()
                rolled.append(store.aggregate(now_ms=NOW))

    threads = [threading.Thread(target=node) for _ in range(2)]
    for thread in threads:
        thread.start()
    for start in range(5, len(events), 8):
        write_postgresql(postgres_url, events[start : start + 8])
    for thread in threads:
        thread.join(TIMEOUT)
    with backend.open() as store:
        rolled.append(store.aggregate(now_ms=NOW))
    assert sum(rolled) == len(events)
    close_to(answer(backend), EXPECTED)


def test_prune_drops_whole_partitions_and_keeps_the_figures(postgres_url: str) -> None:
    june = A + 31  # 2024-06-01
    extra = [
        Event("jetpack_rtc_blocked", {"blog_id": 3, "post_id": 30, "session_id": n},
              ts=(june + n) * DAY_MS)
        for n in range(4)
    ]
    write_postgresql(postgres_url, [*story(), *extra])
    partitions = (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass ORDER BY 1"
    )
    assert [name for (name,) in query(postgres_url, partitions)] == [
        "events_default", "events_y2024m05", "events_y2024m06"]
    later = (june + 200) * DAY_MS
    with PostgresStatsStore(postgres_url) as store:
        store.aggregate(now_ms=later)
        before = dict(store.stats(Scope(since_day=june - 31, until_day=june + 5), now_ms=later))
        # All of May (whole partition) and June's first two days (rows).
        assert store.prune(before_ms=(june + 2) * DAY_MS) == len(story()) + 2
        after = dict(store.stats(Scope(since_day=june - 31, until_day=june + 5), now_ms=later))
    assert after == before
    assert [name for (name,) in query(postgres_url, partitions)] == [
        "events_default", "events_y2024m06"]
    assert query(postgres_url, "SELECT COUNT(*) FROM event_ids") == [(2,)]
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(2,)]


def test_prune_keeps_a_partition_not_rolled_up(postgres_url: str) -> None:
    write_postgresql(postgres_url, story())
    with PostgresStatsStore(postgres_url) as store:
        assert store.prune(before_ms=NOW + 100 * DAY_MS) == 0
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(len(story()),)]


def test_an_interrupt_cancels_the_running_statement(postgres_url: str) -> None:
    write_postgresql(postgres_url, story())
    with PostgresStatsStore(postgres_url) as store:
        failure: list[BaseException] = []

        def long_query() -> None:
            try:
                store._connection.execute("SELECT pg_sleep(60)")  # stands in for a long one
            except BaseException as exc:
                failure.append(exc)

        thread = threading.Thread(target=long_query)
        thread.start()
        wait_until(lambda: bool(query(
            postgres_url, "SELECT 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'"
            " AND state = 'active'")))
        store.interrupt()
        thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert isinstance(failure[0], psycopg.errors.QueryCanceled)
        with pytest.raises(QueryCancelledError):
            store.stats(Scope(), now_ms=NOW)


def test_cli_aggregate_report_prune_on_postgresql(
    postgres_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_postgresql(postgres_url, story())
    assert main(["aggregate", postgres_url]) == 0
    assert "rolled up 21 events" in capsys.readouterr().out
    span = ["--since", "2024-05-01", "--until", "2024-05-02", "--json"]
    assert main(["report", postgres_url, *span]) == 0
    close_to(json.loads(capsys.readouterr().out), EXPECTED)
    assert main(["prune", postgres_url, "--older-than", "90d"]) == 0
    assert "deleted 21 raw events" in capsys.readouterr().out  # 2024 is long ago
    assert main(["report", postgres_url, *span]) == 0
    close_to(json.loads(capsys.readouterr().out), EXPECTED)
    assert query(postgres_url, "SELECT COUNT(*) FROM events") == [(0,)]


def test_cli_errors_on_postgresql_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "postgresql://postgres@127.0.0.1:1/none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tracks: ")
    assert err.count("\n") == 1


def test_fresh_events_move_day_peaks_as_on_sqlite(postgres_url: str, tmp_path: Any) -> None:
    """Peaks with events not rolled up yet: the touched posts that can beat the day's best
    are recomputed, the others not, and the answer equals SQLite's (which recomputes every
    touched post) and the hand-counted one."""
    from tests.tracks.test_stats import at, sqlite_backend

    now = at(B, 23)

    def visit(blog: int, post: int, session: int, user: int, start: int,
              end: int | None) -> list[Event]:
        ids = {"blog_id": blog, "post_id": post, "session_id": session, "wp_user_id": user}
        join = Event("jetpack_rtc_join", ids, ts=start)
        if end is None:
            return [join]
        return [join, Event("jetpack_rtc_leave", {**ids, "duration_ms": end - start}, ts=end)]

    rolled = [
        # Day A: post 1/1 has 3 at once, 1/2 one, 2/1 two.
        *visit(1, 1, 1, 1, at(A, 10), at(A, 11)), *visit(1, 1, 2, 2, at(A, 10), at(A, 11)),
        *visit(1, 1, 3, 3, at(A, 10), at(A, 11)), *visit(1, 2, 4, 4, at(A, 10), at(A, 11)),
        *visit(2, 1, 5, 5, at(A, 10), at(A, 11)), *visit(2, 1, 6, 6, at(A, 10), at(A, 11)),
        # Day B: post 1/1 has 3 at once, one of them still open; 2/1 has two.
        *visit(1, 1, 7, 7, at(B, 9), at(B, 12)), *visit(1, 1, 8, 8, at(B, 9), at(B, 12)),
        *visit(1, 1, 9, 9, at(B, 8), None),
        *visit(2, 1, 10, 10, at(B, 9), at(B, 12)), *visit(2, 1, 11, 11, at(B, 9), at(B, 12)),
    ]
    fresh = [
        # Day A: post 1/2 gains three at once (4: the new best); 2/2 one (cannot beat 3).
        *visit(1, 2, 12, 12, at(A, 10), at(A, 11)), *visit(1, 2, 13, 13, at(A, 10), at(A, 11)),
        *visit(1, 2, 14, 14, at(A, 10), at(A, 11)), *visit(2, 2, 15, 15, at(A, 10), at(A, 11)),
        # Day B: the open visit of 1/1 ends before the others began: 1/1 falls to 2.
        Event("jetpack_rtc_leave", {"blog_id": 1, "post_id": 1, "session_id": 9,
                                    "wp_user_id": 9, "duration_ms": 5 * 60_000},
              ts=at(B, 8, 5)),
    ]
    sqlite = sqlite_backend(tmp_path)
    sqlite.write([*rolled, *fresh])
    write_postgresql(postgres_url, rolled)
    with PostgresStatsStore(postgres_url) as store:
        store.aggregate(now_ms=now)
    write_postgresql(postgres_url, fresh)

    def peaks(result: dict[str, Any]) -> list[tuple[int, int]]:
        return [(day["peak_concurrent_sessions"], day["peak_concurrent_users"])
                for day in result["daily"]]

    for scope, expected in (
        (Scope(since_day=A, until_day=B), [(4, 4), (2, 2)]),
        (Scope(blog_id=1, since_day=A, until_day=B), [(4, 4), (2, 2)]),
        (Scope(blog_id=2, since_day=A, until_day=B), [(2, 2), (2, 2)]),
        (Scope(blog_id=1, post_id=1, since_day=A, until_day=B), [(3, 3), (2, 2)]),
    ):
        with PostgresStatsStore(postgres_url) as store:
            result = dict(store.stats(scope, now_ms=now))
        with sqlite.open() as reference:
            assert result == dict(reference.stats(scope, now_ms=now)), scope
        assert peaks(result) == expected, scope
