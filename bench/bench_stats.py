"""Presence stats over a large SQLite or PostgreSQL store: ingest, rollup, query times.

    .venv/bin/python bench/bench_stats.py [--events 10000000] [--days 90] [--path FILE]
    .venv/bin/python bench/bench_stats.py --postgresql postgresql://user@host/db [...]

With ``--postgresql`` the events are COPYed into that database's event store (when it
holds none yet) and `PostgresStatsStore` answers; it reports each query's total only.

Generates server-shaped events (join/leave pairs, reconnects, blocked, connection errors)
spread over ``--days`` UTC days, 10,000 posts in 2,000 blogs with skewed popularity and
20,000 users; runs `tracks aggregate`; then times `stats()` over the whole range for each
scope, per figure, and once more with a few minutes of events not rolled up yet.
Prints numbers; it is not a test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tracks.presence import postgresql_schema as pg_schema
from tracks.presence import postgresql_writing as pg_writing
from tracks.presence.postgresql import PostgresStatsStore
from tracks.presence.sqlite import SqliteStatsStore
from tracks.presence.sqlite_schema import INSERT, connect
from tracks.presence.stats import Scope

DAY = 86_400_000
POSTS_PER_BLOG = 5
BLOGS = 2_000
USERS = 20_000


def rows(count: int, days: int, now_ms: int, seed: int) -> Iterator[tuple[object, ...]]:
    rng = random.Random(seed)
    first_day = now_ms // DAY - days + 1
    made = 0
    session = 0
    while made < count:
        session += 1
        blog = 1 + int(BLOGS * rng.random() ** 2)
        post = 1 + rng.randrange(POSTS_PER_BLOG)
        user = 1 + int(USERS * rng.random() ** 1.5)
        start = (first_day + rng.randrange(days)) * DAY + rng.randrange(DAY)
        start = min(start, now_ms - 1)
        ids = {"blog": blog, "post": post}
        roll = rng.random()
        if roll < 0.02:
            blocked = {"limit": 5, "limit_kind": "contributors"}
            yield _row("blocked", start, ids, session, user, blocked)
            made += 1
            continue
        if roll < 0.04:
            yield _row("connection_error", start, ids, None, None,
                       {"error_code": "authentication-failed", "close_code": 4401})
            made += 1
            continue
        visits = 2 if roll > 0.95 else 1  # a reconnect reusing its session id
        for _ in range(visits):
            duration = int(rng.lognormvariate(math.log(600_000), 1.2))
            end = min(start + duration, now_ms)
            yield _row("join", start, ids, session, user, {"transport": "websocket"})
            yield _row("leave", end, ids, session, user,
                       {"duration_ms": end - start, "clean": roll > 0.1, "updates": 3})
            made += 2
            if roll <= 0.1:
                yield _row("connection_error", end, ids, session, user,
                           {"error_code": "abnormal-closure", "close_code": 1006})
                made += 1
            start = end + rng.randrange(1_000, 60_000)


def _row(kind: str, ts: int, ids: dict[str, int], session: int | None, user: int | None,
         props: dict[str, object]) -> tuple[object, ...]:
    return (os.urandom(16), "jetpack_rtc_" + kind, ts, ids["blog"], ids["post"], session, user,
            json.dumps(props, separators=(",", ":")))


def ingest(path: Path, count: int, days: int, now_ms: int) -> None:
    connection = connect(path)
    started = time.perf_counter()
    batch: list[tuple[object, ...]] = []
    for row in rows(count, days, now_ms, seed=1):
        batch.append(row)
        if len(batch) == 100_000:
            _write(connection, batch)
    _write(connection, batch)
    elapsed = time.perf_counter() - started
    total = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    connection.close()
    print(f"ingest: {total:,} events in {elapsed:.1f}s ({total / elapsed:,.0f}/s), "
          f"{path.stat().st_size / 1e6:,.0f} MB")


def _write(connection: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
    connection.execute("BEGIN IMMEDIATE")
    connection.executemany(INSERT, batch)
    connection.execute("COMMIT")
    batch.clear()


def ingest_postgresql(url: str, count: int, days: int, now_ms: int) -> None:
    """COPY generated events straight into the events table and event_ids (the bench
    measures the stats, not the recorder: bench/bench_postgresql.py does that)."""
    psycopg = pg_schema.import_psycopg()
    target = pg_schema.parse_url(url)
    with psycopg.connect(target.conninfo, autocommit=True) as connection:
        pg_schema.migrate(connection, target.schema)
        if connection.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()[0]:
            return
        _postgresql_partitions(url, now_ms, days)
        started = time.perf_counter()
        with connection.transaction(), connection.cursor() as cursor:
            with cursor.copy(
                "COPY events (event_id, name, ts, blog_id, post_id, session_id, wp_user_id,"
                " props) FROM STDIN"
            ) as copy:
                for row in rows(count, days, now_ms, seed=1):
                    copy.write_row(_postgresql_row(row))
            cursor.execute("INSERT INTO event_ids (event_id, ts) SELECT event_id, ts FROM events")
        elapsed = time.perf_counter() - started
        connection.execute("VACUUM ANALYZE")
        total = connection.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    print(f"ingest (COPY): {total:,} events in {elapsed:.1f}s ({total / elapsed:,.0f}/s), "
          f"{_postgresql_mb(url):,.0f} MB")


def _postgresql_row(row: tuple[object, ...]) -> tuple[object, ...]:
    event_id, name, ts, blog, post, session, user, props = row
    assert isinstance(event_id, bytes)
    return (uuid.UUID(bytes=event_id), name, ts, blog, post,
            None if session is None else str(session), user, props)


def _postgresql_partitions(url: str, now_ms: int, days: int) -> None:
    import asyncio

    psycopg = pg_schema.import_psycopg()
    target = pg_schema.parse_url(url)
    months = {
        bounds
        for day in range(now_ms // DAY - days - 1, now_ms // DAY + 2)
        if (bounds := pg_writing.month_bounds(day * DAY))
    }

    async def create() -> None:
        async with await psycopg.AsyncConnection.connect(
            target.conninfo, autocommit=True
        ) as connection:
            await pg_schema.amigrate(connection, target.schema)
            await pg_writing.aensure_partitions(connection, target.schema, months)

    asyncio.run(create())


def _postgresql_mb(url: str) -> float:
    """The events table (all partitions, with indexes and TOAST), event_ids and rollups."""
    psycopg = pg_schema.import_psycopg()
    target = pg_schema.parse_url(url)
    with psycopg.connect(target.conninfo, autocommit=True) as connection:
        connection.execute(pg_schema._search_path(target.schema))
        row = connection.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r'",
            (target.schema,),
        ).fetchone()
    return int(row[0]) / 1e6


def _postgresql_write(url: str, batch: list[tuple[object, ...]]) -> None:
    psycopg = pg_schema.import_psycopg()
    target = pg_schema.parse_url(url)
    with psycopg.connect(target.conninfo, autocommit=True) as connection:
        connection.execute(pg_schema._search_path(target.schema))
        with connection.transaction(), connection.cursor() as cursor, cursor.copy(
            "COPY events (event_id, name, ts, blog_id, post_id, session_id, wp_user_id,"
            " props) FROM STDIN"
        ) as copy:
            for row in batch:
                copy.write_row(_postgresql_row(row))


def timed(store: Any, scope: Scope, now_ms: int, repeat: int) -> dict[str, float]:
    runs: list[dict[str, float]] = []
    for _ in range(repeat):
        timings: dict[str, float] = {}
        started = time.perf_counter()
        store.stats(scope, now_ms=now_ms, timings=timings)
        timings["total"] = time.perf_counter() - started
        runs.append(timings)
    return {key: statistics.median(run[key] for run in runs) * 1000 for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--path", type=Path, help="reuse (or create) this store")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgresql", metavar="URL", help="a PostgreSQL store instead")
    args = parser.parse_args()
    now_ms = time.time_ns() // 1_000_000
    if args.postgresql:
        ingest_postgresql(args.postgresql, args.events, args.days, now_ms)
        with PostgresStatsStore(args.postgresql) as postgres:
            run(postgres, args, now_ms, lambda batch: _postgresql_write(args.postgresql, batch),
                lambda: f"{_postgresql_mb(args.postgresql):,.0f} MB")
        return
    path = args.path or Path(tempfile.mkdtemp()) / "events.sqlite"
    if not path.exists():
        ingest(path, args.events, args.days, now_ms)
    with SqliteStatsStore(path) as store:

        def write(batch: list[tuple[object, ...]]) -> None:
            connection = connect(path)
            _write(connection, batch)
            connection.close()

        run(store, args, now_ms, write, lambda: f"{path.stat().st_size / 1e6:,.0f} MB")


def run(store: Any, args: argparse.Namespace, now_ms: int, write: Any, size: Any) -> None:
    """Roll up, time every scope, add 500 fresh events, time again, roll those up."""
    started = time.perf_counter()
    rolled = store.aggregate(now_ms=now_ms)
    print(f"aggregate: {rolled:,} events in {time.perf_counter() - started:.1f}s, "
          f"store now {size()}")
    since = now_ms // DAY - args.days + 1
    scopes = {
        "all": Scope(since_day=since),
        "blog": Scope(blog_id=1, since_day=since),
        "post": Scope(blog_id=1, post_id=1, since_day=since),
    }
    print(f"\nstats() over {args.days} days, median of {args.repeat} runs, ms:")
    for name, scope in scopes.items():
        times = timed(store, scope, now_ms, args.repeat)
        print(f"  {name:5s} " + "  ".join(f"{key}={value:.1f}" for key, value in times.items()))
    # A few minutes of new events, not rolled up yet: the raw part of the answer.
    recent = list(rows(500, 1, now_ms, seed=2))
    write([(row[0], row[1], now_ms - 60_000, *row[3:]) for row in recent])
    print("\nwith 500 events since the last rollup, ms:")
    for name, scope in scopes.items():
        times = timed(store, scope, now_ms + 1, args.repeat)
        print(f"  {name:5s} " + "  ".join(f"{key}={value:.1f}" for key, value in times.items()))
    started = time.perf_counter()
    store.aggregate(now_ms=now_ms + 1)
    print(f"\nincremental aggregate of those: {(time.perf_counter() - started) * 1000:.0f} ms")

if __name__ == "__main__":
    main()
