"""Session timelines from SQLite and PostgreSQL stores, with and without the archived days."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from tests.postgresql_fixtures import create_database, drop_database, write_postgresql
from tracks import Event
from tracks.presence import sqlite_schema as schema
from tracks.presence.archive import archive_store, write_day
from tracks.presence.postgresql_archive import archive_postgresql
from tracks.presence.timeline import session_timeline

DAY = 86_400_000
T0 = 1_709_251_200_000  # 2024-03-01T00:00:00Z
ROOM = {"blog_id": 7, "post_id": 42}


def story() -> list[Event]:
    """Session 111 (user 1) over two days: a drop and reconnect on day 0, a clean visit on
    day 1; session 222 (user 2) keeps it company; session 333 is someone else's."""
    ada = {**ROOM, "session_id": 111, "wp_user_id": 1}
    bob = {**ROOM, "session_id": 222, "wp_user_id": 2}
    return [
        Event("jetpack_rtc_join", {**bob, "contributors": [2]}, ts=T0 + 1_000),
        Event("jetpack_rtc_join", {**ada, "contributors": [1, 2]}, ts=T0 + 2_000),
        Event("jetpack_rtc_leave", {**ada, "duration_ms": 1_000, "clean": False}, ts=T0 + 3_000),
        Event("jetpack_rtc_connection_error", {**ada, "error_code": "abnormal-closure"},
              ts=T0 + 3_000),
        Event("jetpack_rtc_join", {**ada, "reconnect": True}, ts=T0 + 4_000),
        Event("jetpack_rtc_leave", {**ada, "duration_ms": 1_000, "clean": True}, ts=T0 + 5_000),
        Event("jetpack_rtc_leave", {**bob, "duration_ms": 9_000, "clean": True}, ts=T0 + 10_000),
        Event("jetpack_rtc_join", {**ada}, ts=T0 + DAY + 1_000),
        Event("jetpack_rtc_leave", {**ada, "duration_ms": 2_000, "clean": True},
              ts=T0 + DAY + 3_000),
        Event("jetpack_rtc_join", {**ROOM, "session_id": 333, "wp_user_id": 3},
              ts=T0 + 2 * DAY),
    ]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    if request.param == "sqlite":
        yield tmp_path / "events.sqlite"
        return
    url = create_database()
    try:
        yield url
    finally:
        drop_database(url)


def write(store: Path | str, events: list[Event]) -> None:
    if isinstance(store, str):
        write_postgresql(store, events)
        return
    connection = schema.connect(store)
    schema.insert_events(connection, events)
    connection.close()


def check(timeline: dict[str, object] | None, *, connections: int = 3) -> None:
    assert timeline is not None
    assert timeline["wp_user_id"] == 1
    found = timeline["connections"]
    assert isinstance(found, list)
    assert len(found) == connections
    assert [c["clean"] for c in found] == [False, True, True][:connections]
    assert [c["reconnect"] for c in found] == [False, True, False][:connections]
    assert timeline["total_duration_ms"] == [1_000, 2_000, 4_000][connections - 1]
    assert timeline["errors"] == [{"ts": T0 + 3_000, "origin": "server",
                                   "error_code": "abnormal-closure", "close_code": None}]
    company = timeline["company"]
    assert isinstance(company, list)
    assert company[0]["session_id"] == 111
    assert list(company[0]["contributors"]) == [1, 2]


def test_a_timeline_from_the_store(store: Path | str) -> None:
    write(store, story())
    check(session_timeline(store, 7, 42, 111))
    assert session_timeline(store, 7, 42, 999) is None
    assert session_timeline(store, 7, 43, 111) is None


def test_a_timeline_reads_archived_days_when_asked(store: Path | str, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    events = story()
    write(store, events)
    if isinstance(store, str):
        archive_postgresql(store, archive, before_ms=T0 + DAY)
    else:
        archive_store(store, archive, before_ms=T0 + DAY)
    # Day 0 left the store: only day 1's visit is there, unless the archive is read.
    only_stored = session_timeline(store, 7, 42, 111)
    assert only_stored is not None
    assert len(only_stored["connections"]) == 1  # type: ignore[arg-type]
    check(session_timeline(store, 7, 42, 111, archive=archive))
    # An event both archived and still stored (a crash between the two) counts once.
    write_day(archive, date(2024, 3, 2), [e for e in events if T0 + DAY <= e.ts < T0 + 2 * DAY])
    check(session_timeline(store, 7, 42, 111, archive=archive))
    # A session only in the archive.
    assert session_timeline(store, 7, 42, 222) is None
    bob = session_timeline(store, 7, 42, 222, archive=archive)
    assert bob is not None
    assert bob["wp_user_id"] == 2
