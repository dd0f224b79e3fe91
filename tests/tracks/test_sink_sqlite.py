"""SqliteRecorder and its schema: real files, WAL, indexed columns, idempotency, migrations."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import anyio
import pytest

from tests.tracks.tracks_testing import TIMEOUT, make_events
from tracks import Event, SqliteRecorder, read_events
from tracks.presence import sqlite_schema as schema


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def record_all(path: Path, events: Iterable[Event], **options: object) -> SqliteRecorder:
    recorder = SqliteRecorder(path, flush_interval=0, **options)  # type: ignore[arg-type]
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    return recorder


async def test_events_land_in_indexed_columns(tmp_path: Path) -> None:
    path = tmp_path / "data" / "events.sqlite"
    event = Event(
        "jetpack_rtc_join",
        {"blog_id": 7, "post_id": 8, "session_id": 123, "wp_user_id": 9, "extra": [1]},
        ts=1_700_000_000_000,
    )
    recorder = await record_all(path, [event])
    assert recorder.description == f"sqlite://{path}"
    assert query(
        path, "SELECT name, ts, blog_id, post_id, session_id, wp_user_id, props FROM events"
    ) == [("jetpack_rtc_join", 1_700_000_000_000, 7, 8, 123, 9, '{"extra":[1]}')]
    # The view shows the full properties as JSON.
    (props,) = query(path, "SELECT props FROM events_json")[0]
    assert json.loads(props) == event.props_json()
    assert list(read_events(path)) == [event]


async def test_schema_is_wal_versioned_and_indexed(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    await record_all(path, make_events(1))
    assert query(path, "PRAGMA journal_mode") == [("wal",)]
    assert query(path, "PRAGMA user_version") == [(schema.SCHEMA_VERSION,)]
    indexed = {
        row[0]
        for (index,) in query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")
        for row in query(path, f"SELECT name FROM pragma_index_info('{index}')")
    }
    assert {"event_id", "name", "ts", "blog_id", "post_id", "session_id", "wp_user_id"} <= indexed


async def test_a_replayed_batch_never_double_counts(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    events = make_events(50)
    await record_all(path, events)
    await record_all(path, events[25:] + make_events(5, start=50))  # replay, plus new ones
    assert query(path, "SELECT COUNT(*), COUNT(DISTINCT event_id) FROM events") == [(55, 55)]


async def test_batches_are_written_off_the_event_loop_one_transaction_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    calls: list[tuple[int, int]] = []
    insert = schema.insert_events

    def spy(connection: sqlite3.Connection, events: Iterable[Event]) -> int:
        events = list(events)
        calls.append((threading.get_ident(), len(events)))
        return insert(connection, events)

    monkeypatch.setattr(schema, "insert_events", spy)
    recorder = SqliteRecorder(tmp_path / "events.sqlite", flush_interval=3600, batch_size=100)
    for event in make_events(250):
        recorder.record(event)
    async with recorder:
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    assert [count for _, count in calls] == [100, 100, 50]
    assert all(thread != loop_thread for thread, _ in calls)


async def test_read_events_orders_by_ts(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    events = make_events(10)
    await record_all(path, reversed(events))
    assert [event.event_id for event in read_events(path)] == [e.event_id for e in events]
    assert list(read_events(f"sqlite://{path}")) == events


def test_migration_from_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    sqlite3.connect(path).close()  # version 0: no table yet
    connection = schema.connect(path)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (schema.SCHEMA_VERSION,)
        assert schema.migrate(connection) == schema.SCHEMA_VERSION  # idempotent
    finally:
        connection.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(schema.SchemaError, match="newer"):
        schema.connect(path)
    with pytest.raises(schema.SchemaError, match="newer"):
        schema.connect(path, readonly=True)


async def test_an_unwritable_store_is_retried_then_dropped_and_counted(tmp_path: Path) -> None:
    from tracks import RetryPolicy

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    recorder = await record_all(
        blocker / "events.sqlite",
        make_events(3),
        retry=RetryPolicy(max_attempts=2, base_delay=0.001, jitter=0),
    )
    assert (recorder.stats.dropped, recorder.stats.written) == (3, 0)


async def test_promoted_props_round_trip_whatever_their_type(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite"
    odd = [
        Event("jetpack_rtc_join", {"blog_id": "b1", "post_id": 2.5, "session_id": "s"}),
        Event("jetpack_rtc_join", {"blog_id": True, "wp_user_id": [1, 2], "session_id": 7}),
        Event("jetpack_rtc_join", {"other": {"blog_id": 1}}),
    ]
    await record_all(path, odd)
    assert sorted(read_events(path), key=odd.index) == odd
    for event, (props,) in zip(
        odd, query(path, "SELECT props FROM events_json ORDER BY id"), strict=True
    ):
        assert json.loads(props) == event.props_json()
