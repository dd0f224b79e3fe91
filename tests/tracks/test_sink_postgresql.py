"""PostgresRecorder and its schema, against a real PostgreSQL: a fresh database per test.

Exactly once (a replayed batch, the same event from two nodes), bad data set aside, an
outage spooled and delivered once (a throwaway server the test stops and restarts),
migrations run once however many nodes start together, ``tracks tail`` and ``rtc serve``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.postgresql_fixtures import ThrowawayPostgres, postgres_url
from tests.tracks.tracks_testing import TIMEOUT, make_events
from tracks import Event, MemoryRecorder, PostgresRecorder, RetryPolicy, open_recorder, read_events
from tracks.outage import classify
from tracks.presence import postgresql_schema as schema
from tracks.presence.reading import follow
from tracks.urls import can_spool, recorder_kind

psycopg = pytest.importorskip("psycopg")

__all__ = ["postgres_url"]  # the fixture, imported to be found


def query(url: str, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url.split("?")[0], autocommit=True) as connection:
        cursor = connection.execute(sql, tuple(params))
        return cursor.fetchall() if cursor.description else []


async def record_all(url: str, events: Iterable[Event], **options: Any) -> PostgresRecorder:
    recorder = PostgresRecorder(url, flush_interval=0, **options)
    async with recorder:
        for event in events:
            recorder.record(event)
        with anyio.fail_after(TIMEOUT):
            await recorder.flush()
    return recorder


def test_urls_name_the_postgresql_recorder() -> None:
    for url in ("postgresql://u@h:5/db", "postgres://h/db?schema=x", " POSTGRESQL://h/db"):
        assert recorder_kind(url) == "postgresql"
        assert can_spool(url)
    assert isinstance(open_recorder("postgres://h/db"), PostgresRecorder)
    with pytest.raises(ValueError, match="accepted forms"):
        recorder_kind("postgresql:db")
    target = schema.parse_url("postgres://u:secret@h:5/db?schema=ev&sslmode=disable")
    assert target.schema == "ev"
    assert target.conninfo == "postgresql://u:secret@h:5/db?sslmode=disable"
    assert "secret" not in target.description
    assert target.description == "postgresql://u:***@h:5/db?schema=ev"


@pytest.mark.slow
def test_without_psycopg_the_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None\n"
        "import tracks\n"
        "try:\n"
        "    tracks.open_recorder('postgresql://h/db')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "rtc-presence[postgresql]" in out.stdout


def test_psycopg_errors_are_classified() -> None:
    errors = psycopg.errors
    assert classify(errors.NumericValueOutOfRange()).kind == "data"
    assert classify(errors.InvalidTextRepresentation()).kind == "data"
    assert classify(errors.UntranslatableCharacter()).kind == "data"
    assert classify(errors.ProgramLimitExceeded()).kind == "data"
    assert classify(errors.UniqueViolation()).kind == "data"
    assert classify(psycopg.OperationalError("server closed the connection")).kind == "transient"
    assert classify(errors.AdminShutdown()).kind == "transient"
    assert classify(psycopg.InterfaceError("the connection is closed")).kind == "transient"
    assert classify(errors.UndefinedTable()).kind == "unexpected"


async def test_a_batch_lands_in_indexed_columns_and_partitions(postgres_url: str) -> None:
    url = f"{postgres_url}?schema=analytics"
    event = Event(
        "jetpack_rtc_join",
        {"blog_id": 7, "post_id": 8, "session_id": 123, "wp_user_id": 9, "extra": [1]},
        ts=1_700_000_000_000,  # 2023-11-14
    )
    recorder = await record_all(url, [event, *make_events(3)])
    assert recorder.stats.written == 4
    assert "analytics" in recorder.description
    rows = query(
        url,
        "SELECT name, ts, blog_id, post_id, session_id, wp_user_id, props"
        " FROM analytics.events ORDER BY id LIMIT 1",
    )
    # An int session id stays in props (the column holds its text, to be found).
    assert rows == [
        ("jetpack_rtc_join", 1_700_000_000_000, 7, 8, "123", 9, {"extra": [1], "session_id": 123})
    ]
    (props,) = query(url, "SELECT props FROM analytics.events_json ORDER BY id LIMIT 1")[0]
    assert props == event.props_json()
    partitions = {
        name for (name,) in query(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'analytics.events'::regclass",
        )
    }
    assert partitions == {"events_default", "events_y2023m11"}
    assert query(url, "SELECT count(*) FROM analytics.events_y2023m11") == [(4,)]
    assert next(iter(read_events(url))) == event


async def test_read_events_orders_by_ts_and_round_trips(postgres_url: str) -> None:
    events = make_events(10)
    await record_all(postgres_url, reversed(events))
    assert list(read_events(postgres_url)) == events


async def test_a_replayed_batch_and_two_nodes_store_each_event_once(postgres_url: str) -> None:
    events = make_events(50)
    await record_all(postgres_url, events)
    await record_all(postgres_url, events[25:] + make_events(5, start=50))  # replay + new
    # Two nodes record the same logical event (same deterministic id), at other times.
    twin = [Event(e.name, e.props, ts=e.ts + 1234, event_id=e.event_id) for e in events[:10]]
    first = PostgresRecorder(postgres_url, flush_interval=0)
    second = PostgresRecorder(postgres_url, flush_interval=0)
    async with first, second:
        for one, other in zip(events[:10], twin, strict=True):
            first.record(one)
            second.record(other)
        with anyio.fail_after(TIMEOUT):
            await first.flush()
            await second.flush()
    assert query(postgres_url, "SELECT count(*), count(DISTINCT event_id) FROM events") == [
        (55, 55)
    ]
    assert query(postgres_url, "SELECT count(*) FROM event_ids") == [(55,)]
    assert first.sink.inserted + second.sink.inserted == 0  # type: ignore[attr-defined]


async def test_an_out_of_range_event_is_dead_lettered_and_the_rest_written(
    postgres_url: str, tmp_path: Path
) -> None:
    good = make_events(20)
    bad = Event("jetpack_rtc_join", {"blog_id": 2**63, "post_id": 1, "session_id": "x"})
    nul = Event("jetpack_rtc_join", {"blog_id": 1, "post_id": 1, "note": "a\x00b"})
    recorder = await record_all(
        postgres_url, [*good[:10], bad, *good[10:], nul], spool=tmp_path / "spool"
    )
    assert recorder.stats.dead_lettered == 2
    assert recorder.stats.written == 20
    assert {e.event_id for e in read_events(postgres_url)} == {e.event_id for e in good}
    lines = (tmp_path / "spool" / "dead-letter.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["event_id"] for line in lines) == sorted(
        [bad.event_id, nul.event_id]
    )


async def test_concurrent_migrations_run_once(postgres_url: str) -> None:
    results: list[int] = []

    async def start_node() -> None:
        connection = await psycopg.AsyncConnection.connect(postgres_url, autocommit=True)
        async with connection:
            results.append(await schema.amigrate(connection, "shared"))

    with anyio.fail_after(TIMEOUT * 2):
        async with anyio.create_task_group() as nodes:
            for _ in range(6):
                nodes.start_soon(start_node)
    assert results == [schema.SCHEMA_VERSION] * 6
    assert query(postgres_url, "SELECT version FROM shared.schema_version") == [
        (schema.SCHEMA_VERSION,)
    ]
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        assert schema.migrate(connection, "shared") == schema.SCHEMA_VERSION  # idempotent
        assert schema.schema_version(connection, "shared") == schema.SCHEMA_VERSION


async def test_version_2_migrates_to_the_indexes_queries_use(postgres_url: str) -> None:
    """Step 3 drops the indexes no query uses, on the parent and every partition, and
    indexes ts with BRIN; the events stored before it are all still there."""
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute("CREATE SCHEMA old")
        connection.execute("SET search_path TO old")
        with connection.transaction():
            for statement in (*schema.MIGRATIONS[0], *schema.MIGRATIONS[1]):
                connection.execute(statement)
            connection.execute(
                "CREATE TABLE schema_version (singleton boolean PRIMARY KEY DEFAULT true,"
                " version integer NOT NULL)"
            )
            connection.execute("INSERT INTO schema_version (version) VALUES (2)")
    url = f"{postgres_url}?schema=old"
    before, after = make_events(3), make_events(4, start=3)
    await record_all(url, before)  # partitions made, then...
    query(postgres_url, "UPDATE old.schema_version SET version = 2")
    query(postgres_url, "CREATE INDEX events_ts ON old.events (ts)")  # ...as version 2 had
    query(postgres_url, "CREATE INDEX events_user ON old.events (wp_user_id)")
    query(postgres_url, "DROP INDEX old.events_ts_brin")
    for later in ("rollup_peaks_day_sessions", "rollup_peaks_day_users"):  # step 4's
        query(postgres_url, f"DROP INDEX old.{later}")
    recorder = await record_all(url, after)  # a new connection: migrates to 3
    assert recorder.stats.written == 4
    assert query(postgres_url, "SELECT version FROM old.schema_version") == [
        (schema.SCHEMA_VERSION,)
    ]
    indexes = query(
        postgres_url,
        "SELECT DISTINCT regexp_replace(indexname, '^events_y[0-9m]+_', '')"
        " FROM pg_indexes WHERE schemaname = 'old' AND tablename LIKE 'events%%'",
    )
    names = {name for (name,) in indexes}
    assert not {"events_ts", "events_name_ts", "events_user"} & names
    assert {"events_id", "events_post_session", "events_post_ts", "events_ts_brin"} <= names
    stored = {event.event_id for event in read_events(url)}
    assert stored == {event.event_id for event in (*before, *after)}


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    await record_all(postgres_url, make_events(1))
    query(postgres_url, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(schema.SchemaError, match="newer"):
        list(read_events(postgres_url))


@pytest.mark.slow
async def test_tail_prints_the_events(postgres_url: str) -> None:
    events = make_events(5)
    await record_all(postgres_url, events)
    assert [e.event_id for e in follow(postgres_url, last=3, forever=False)] == [
        e.event_id for e in events[-3:]
    ]
    with anyio.fail_after(TIMEOUT * 4):
        out = await anyio.run_process(
            [sys.executable, "-m", "tracks.cli", "tail", "--no-follow", "--json", "-n", "5",
             postgres_url],
        )
        missing = await anyio.run_process(
            [sys.executable, "-m", "tracks.cli", "tail", "--no-follow",
             f"{postgres_url}?schema=nothing_here"],
            check=False,
        )
    assert [json.loads(line)["event_id"] for line in out.stdout.decode().splitlines()] == [
        e.event_id for e in events
    ]
    assert missing.returncode == 2
    assert "no event store" in missing.stderr.decode()


@pytest.mark.slow
async def test_a_database_outage_is_spooled_and_delivered_exactly_once(tmp_path: Path) -> None:
    server = ThrowawayPostgres()
    try:
        server.start()
        url = server.url
        events = make_events(30)
        retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05)
        recorder = PostgresRecorder(
            url, flush_interval=0, spool=tmp_path / "spool", retry=retry, connect_timeout=1
        )
        async with recorder:
            for event in events[:10]:
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
            server.stop()
            for event in events[10:20]:
                recorder.record(event)
            with anyio.fail_after(TIMEOUT):
                await recorder.flush()
            assert recorder.stats.spooled == 10
            server.start()
            for event in events[20:]:
                recorder.record(event)
            # Leaving the block replays the spool at once (newer batches joined it, in order).
        assert recorder.stats.written == 30
        assert query(url, "SELECT count(*), count(DISTINCT event_id) FROM events") == [(30, 30)]
        assert [e.event_id for e in read_events(url)] == [e.event_id for e in events]
    finally:
        server.close()


@pytest.mark.slow
async def test_rtc_serve_records_a_join_and_leave(postgres_url: str, tmp_path: Path) -> None:
    from rtc import RtcServer, ServerConfig
    from tests.rtc.clients import RawClient

    config = ServerConfig(
        data_dir=tmp_path, port=0, room_grace=0.05, store_flush_interval=0.01,
        recorders=(postgres_url, "memory:"),
    )
    async with RtcServer(config) as server:
        memory = server.recorders[1]
        assert isinstance(memory, MemoryRecorder)
        async with RawClient.connect(f"{server.ws_url}/7/42") as client:
            await client.join(31, user=5)
            await client.barrier()
        with anyio.fail_after(TIMEOUT):
            await memory.wait_for(lambda e: e.name == "jetpack_rtc_leave")
            await server.flush()
    names = [(e.name, e.props.get("session_id")) for e in read_events(postgres_url)]
    assert names == [("jetpack_rtc_join", 31), ("jetpack_rtc_leave", 31)]
