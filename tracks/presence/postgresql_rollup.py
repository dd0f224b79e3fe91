"""Daily rollups of the PostgreSQL event store: the aggregation job and retention. Blocking psycopg.

The same design as SQLite's (`tracks.presence.rollup`: per-day tables at three levels, exact
distinct counts through ``rollup_entity_days``/``rollup_distinct``, peaks recomputed for the
post-days new events touch), so the same figures come out. The tables are migration step 2
(`tracks.presence.postgresql_schema.ROLLUP_TABLES`).

**One at a time.** A run holds a session advisory lock per schema (`try_rollup_lock`): with
several nodes on one database, exactly one rolls up; the others skip at once (never wait).

**No event missed.** Ids are drawn at insert but seen at commit, so a run first takes a
SHARE lock on ``events`` for an instant: it waits for the inserts in flight to commit (new
ones wait a moment behind it), so every id up to the newest it then reads is committed.

**Retention** (`prune`) drops whole monthly partitions that are entirely older than the
cut and rolled up, deletes rows only in the partial month, and deletes their ``event_ids``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of
from tracks.presence.postgresql_peaks import recompute_peaks
from tracks.presence.postgresql_schema import import_psycopg
from tracks.presence.stats import AGGREGATE_CHUNK

__all__ = [
    "DURATION_SQL",
    "ERROR_CODE_SQL",
    "KIND_SQL",
    "SESSION_SQL",
    "Aggregated",
    "aggregate",
    "bucket_sql",
    "drop_partition",
    "monthly_partitions",
    "prune",
    "rollup_state",
    "try_rollup_lock",
]

logger = logging.getLogger(__name__)

# Suffix tests rather than LIKE: '%' would clash with psycopg's placeholders.
KIND_SQL = (
    "CASE WHEN right(name, 5) = '_join' THEN 'join'"
    " WHEN right(name, 6) = '_leave' THEN 'leave'"
    " WHEN right(name, 8) = '_blocked' THEN 'blocked'"
    " WHEN right(name, 17) = '_connection_error' THEN 'error' END"
)
"""An event's kind from its name: join, leave, blocked, error, or NULL (as SQLite's)."""

SESSION_SQL = "CASE WHEN props ? 'session_id' THEN session_id ELSE 's' || session_id END"
"""A session's entity text: an int id's digits (props keeps the int), 's' + a str id."""

DURATION_SQL = (
    "CASE WHEN jsonb_typeof(props -> 'duration_ms') = 'number'"
    " THEN (props ->> 'duration_ms')::float8 END"
)
"""A leave's ``duration_ms`` when it is a number (anything else counts no duration)."""

ERROR_CODE_SQL = (
    "COALESCE(props ->> 'error_code', props ->> 'close_code', props ->> 'code', 'unknown')"
)


def bucket_sql(duration: str) -> str:
    """`tracks.presence.figures.duration_bucket` in SQL: the same libm ``log`` on the same
    doubles, so the same bucket."""
    return (
        f"CASE WHEN {duration} IS NULL THEN NULL WHEN trunc({duration}) < 1 THEN 0"
        f" ELSE 1 + floor(ln(trunc({duration})) / ln(1.02::float8))::integer END"
    )


_LOCK_SPACE = 0x726F_6C6C  # "roll"
_LEVELS = "CROSS JOIN (VALUES (0), (1), (2)) AS levels (level)"
_B = "CASE WHEN level = 2 THEN 0 ELSE blog_id END"
_P = "CASE WHEN level = 0 THEN post_id ELSE 0 END"


@dataclass(frozen=True, slots=True)
class Aggregated:
    """What one `aggregate()` run did (None from `aggregate`: another node was running)."""

    events: int
    last_id: int
    peaks_recomputed: int


def rollup_state(connection: Any) -> tuple[int, int]:
    """``(last_id, rolled_at_ms)`` of the rollups; ``(0, 0)`` before the first run."""
    row = connection.execute("SELECT last_id, rolled_at FROM rollup_state").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


@contextmanager
def try_rollup_lock(connection: Any, schema: str) -> Iterator[bool]:
    """Hold the schema's rollup lock (a session advisory lock) if no one else does.

    Yields whether it was taken; never waits for it.
    """
    key = (_LOCK_SPACE, schema)
    row = connection.execute(
        "SELECT pg_try_advisory_lock(%s, hashtext(%s))", key
    ).fetchone()
    taken = bool(row and row[0])
    try:
        yield taken
    finally:
        # A broken connection has lost the lock with its session already.
        if taken and not connection.closed:
            connection.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", key)


def _newest_committed_id(connection: Any) -> int:
    with connection.transaction():
        connection.execute("SET LOCAL lock_timeout = '30s'")
        # SHARE conflicts with the inserts' ROW EXCLUSIVE: once granted, none is in flight.
        connection.execute("LOCK TABLE events IN SHARE MODE")
        row = connection.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()
    return int(row[0])


def aggregate(
    connection: Any, schema: str, *, now_ms: int, chunk: int = AGGREGATE_CHUNK
) -> Aggregated | None:
    """Fold every event committed since the last run into the rollups, ``chunk`` ids per
    transaction; None when another session holds the rollup lock (it is running).

    The connection is in autocommit mode with its search_path on ``schema``.
    """
    with try_rollup_lock(connection, schema) as taken:
        if not taken:
            logger.info("rollup skipped: another node is rolling up %s", schema)
            return None
        total = recomputed = 0
        last_id, _ = rollup_state(connection)
        newest = _newest_committed_id(connection)
        while True:
            upto = min(last_id + chunk, newest)
            with connection.transaction():
                events, touched = _fold(connection, last_id, upto)
                touched |= _open_post_days(connection, now_ms)
                recomputed += recompute_peaks(connection, touched, now_ms=now_ms)
                connection.execute(
                    "UPDATE rollup_state SET last_id = %s, rolled_at = %s", (upto, now_ms)
                )
            total += events
            last_id = upto
            if upto >= newest:
                break
        if total:
            # Sets the visibility map, so a range's histogram stays an index-only scan
            # (its primary key INCLUDEs n) rather than a heap visit per row until
            # autovacuum comes by. Only the pages this run changed are visited.
            connection.execute("VACUUM (ANALYZE) rollup_durations")
    logger.info("rolled up %d events (through id %d)", total, last_id)
    return Aggregated(events=total, last_id=last_id, peaks_recomputed=recomputed)


def _fold(connection: Any, after_id: int, upto_id: int) -> tuple[int, set[tuple[int, int, int]]]:
    """Add events ``after_id < id <= upto_id`` to the additive and distinct rollups.

    Returns how many events were read and the (blog, post, day) whose peaks they touch.
    """
    run = connection.execute
    run(
        "CREATE TEMP TABLE batch ON COMMIT DROP AS SELECT kind, blog_id, post_id,"
        " session, wp_user_id, ts, (ts / %s)::integer AS day, duration_ms,"
        f" {bucket_sql('duration_ms')} AS bucket, code FROM ("
        f"  SELECT {KIND_SQL} AS kind, blog_id, post_id, {SESSION_SQL} AS session,"
        f"  wp_user_id, ts, {DURATION_SQL} AS duration_ms, {ERROR_CODE_SQL} AS code"
        "  FROM events WHERE id > %s AND id <= %s"
        "  AND blog_id IS NOT NULL AND post_id IS NOT NULL) AS e"
        " WHERE kind IS NOT NULL",
        (DAY_MS, after_id, upto_id),
    )
    row = run("SELECT COUNT(*) FROM batch").fetchone()
    events = int(row[0])
    run(
        "INSERT INTO rollup_counts (blog_id, post_id, day, joins, blocked)"
        f" SELECT {_B} AS b, {_P} AS p, day, COUNT(*) FILTER (WHERE kind = 'join'),"
        f" COUNT(*) FILTER (WHERE kind = 'blocked') FROM batch {_LEVELS}"
        " WHERE kind IN ('join', 'blocked') GROUP BY 1, 2, day"
        " ON CONFLICT (blog_id, post_id, day) DO UPDATE SET"
        " joins = rollup_counts.joins + excluded.joins,"
        " blocked = rollup_counts.blocked + excluded.blocked"
    )
    run(
        "INSERT INTO rollup_errors (blog_id, post_id, day, code, n)"
        f" SELECT {_B}, {_P}, day, code, COUNT(*) FROM batch {_LEVELS}"
        " WHERE kind = 'error' GROUP BY 1, 2, day, code"
        " ON CONFLICT (blog_id, post_id, day, code) DO UPDATE SET n = rollup_errors.n + excluded.n"
    )
    run(
        "INSERT INTO rollup_durations (blog_id, post_id, day, bucket, n)"
        f" SELECT {_B}, {_P}, day, bucket, COUNT(*) FROM batch {_LEVELS}"
        " WHERE kind = 'leave' AND bucket IS NOT NULL GROUP BY 1, 2, day, bucket"
        " ON CONFLICT (blog_id, post_id, day, bucket) DO UPDATE SET"
        " n = rollup_durations.n + excluded.n"
    )
    _fold_distinct(connection)
    touched: set[tuple[int, int, int]] = set()
    for blog_id, post_id, first, last in run(
        "SELECT blog_id, post_id,"
        " MIN(CASE WHEN kind = 'leave' THEN ts - COALESCE(duration_ms, 0) ELSE ts END),"
        " MAX(CASE WHEN kind = 'join' THEN ts + %s ELSE ts END)"
        " FROM batch WHERE kind IN ('join', 'leave') GROUP BY blog_id, post_id, day",
        (MAX_OPEN_MS,),
    ):
        for day in range(day_of(int(first)), day_of(int(last)) + 1):
            touched.add((int(blog_id), int(post_id), day))
    return events, touched


_ENTITY_JOIN = (
    "ON e.kind = t.kind AND e.blog_id = t.blog_id AND e.post_id = t.post_id"
    " AND e.entity = t.entity"
)


def _fold_distinct(connection: Any) -> None:
    run = connection.execute
    # Sessions and posts are unique per post; users are distinct at each level separately.
    run(
        "CREATE TEMP TABLE new_days ON COMMIT DROP AS"
        " SELECT DISTINCT 'session' AS kind, blog_id, post_id, session AS entity, day"
        " FROM batch WHERE kind = 'join' AND session IS NOT NULL"
        " UNION SELECT DISTINCT 'post', blog_id, post_id, '0', day FROM batch"
        " WHERE kind = 'join'"
        f" UNION SELECT DISTINCT 'user', {_B}, {_P}, wp_user_id::text, day FROM batch {_LEVELS}"
        " WHERE kind = 'join' AND wp_user_id IS NOT NULL"
    )
    run(
        "DELETE FROM new_days n USING rollup_entity_days e WHERE e.kind = n.kind"
        " AND e.blog_id = n.blog_id AND e.post_id = n.post_id AND e.entity = n.entity"
        " AND e.day = n.day"
    )
    run(
        "CREATE TEMP TABLE touched ON COMMIT DROP AS"
        " SELECT DISTINCT kind, blog_id, post_id, entity FROM new_days"
    )
    # The touched entities' rows before (counted -1) and after (+1) relinking prev_day.
    run(
        "CREATE TEMP TABLE delta ON COMMIT DROP AS SELECT e.kind, e.blog_id, e.post_id, e.day,"
        f" e.prev_day, -1 AS n FROM touched t JOIN rollup_entity_days e {_ENTITY_JOIN}"
    )
    run(
        "INSERT INTO rollup_entity_days (kind, blog_id, post_id, entity, day, prev_day)"
        " SELECT kind, blog_id, post_id, entity, day, -1 FROM new_days"
    )
    run(
        "CREATE TEMP TABLE relinked ON COMMIT DROP AS SELECT e.kind, e.blog_id, e.post_id,"
        " e.entity, e.day, COALESCE(LAG(e.day) OVER (PARTITION BY e.kind, e.blog_id,"
        " e.post_id, e.entity ORDER BY e.day), -1) AS prev_day"
        f" FROM touched t JOIN rollup_entity_days e {_ENTITY_JOIN}"
    )
    run(
        "UPDATE rollup_entity_days e SET prev_day = r.prev_day FROM relinked r"
        " WHERE e.kind = r.kind AND e.blog_id = r.blog_id AND e.post_id = r.post_id"
        " AND e.entity = r.entity AND e.day = r.day AND e.prev_day != r.prev_day"
    )
    run("INSERT INTO delta SELECT kind, blog_id, post_id, day, prev_day, 1 FROM relinked")
    run(
        "INSERT INTO rollup_distinct (kind, blog_id, post_id, day, prev_day, n)"
        " SELECT kind, b, p, day, prev_day, SUM(n) FROM ("
        "  SELECT kind, blog_id AS b, post_id AS p, day, prev_day, n FROM delta"
        "  UNION ALL SELECT kind, blog_id, 0, day, prev_day, n FROM delta WHERE kind != 'user'"
        "  UNION ALL SELECT kind, 0, 0, day, prev_day, n FROM delta WHERE kind != 'user') AS d"
        " GROUP BY kind, b, p, day, prev_day HAVING SUM(n) != 0"
        " ON CONFLICT (kind, blog_id, post_id, day, prev_day) DO UPDATE SET"
        " n = rollup_distinct.n + excluded.n"
    )
    run(
        "INSERT INTO rollup_post_totals (blog_id, post_id, sessions)"
        " SELECT blog_id, post_id, SUM(n) FROM delta"
        " WHERE kind = 'session' AND prev_day = -1 GROUP BY blog_id, post_id HAVING SUM(n) != 0"
        " ON CONFLICT (blog_id, post_id) DO UPDATE SET"
        " sessions = rollup_post_totals.sessions + excluded.sessions"
    )
    run("DELETE FROM rollup_distinct WHERE n = 0")


# Joins of the last 24 h that no leave of theirs closed, earliest first per post: the joins
# EXCEPT the leaves' starts, as the SQLite store's `tracks.presence.rollup` query (a set
# difference PostgreSQL hashes or sorts once; NULLs compare equal in it), not every join and
# leave of the day read into Python at each run.
_OPEN_POSTS_SQL = (
    "SELECT blog_id, post_id, MIN(ts) FROM ("
    f" SELECT blog_id, post_id, {SESSION_SQL} AS session, ts::float8 AS ts FROM events"
    " WHERE ts >= %(since)s AND blog_id IS NOT NULL AND post_id IS NOT NULL"
    " AND right(name, 5) = '_join'"
    " EXCEPT"
    f" SELECT blog_id, post_id, {SESSION_SQL}, ts - COALESCE({DURATION_SQL}, 0) FROM events"
    " WHERE ts >= %(since)s AND blog_id IS NOT NULL AND post_id IS NOT NULL"
    " AND right(name, 6) = '_leave'"
    ") AS open_joins GROUP BY blog_id, post_id"
)


def _open_post_days(connection: Any, now_ms: int) -> set[tuple[int, int, int]]:
    """Posts with a join of the last 24 h that no leave matched: (post, day) through today.

    They stay open across midnight with no new event, so today's peak needs them; the set
    is saved for queries (``rollup_open_posts``).
    """
    open_posts = {
        (int(blog), int(post)): int(first)
        for blog, post, first in connection.execute(
            _OPEN_POSTS_SQL, {"since": now_ms - MAX_OPEN_MS}
        )
    }
    connection.execute("DELETE FROM rollup_open_posts")
    with connection.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO rollup_open_posts (blog_id, post_id) VALUES (%s, %s)", list(open_posts)
        )
    today = day_of(now_ms)
    return {
        (blog, post, day)
        for (blog, post), first in open_posts.items()
        for day in range(day_of(first), today + 1)
    }


def prune(connection: Any, *, before_ms: int, upto_id: int | None = None) -> int:
    """Delete the raw events older than ``before_ms`` with ``id <= upto_id`` (default: the
    rollups' ``last_id``), and their ``event_ids``, in one transaction; return how many.

    A monthly partition entirely older than ``before_ms`` whose rows all qualify is dropped
    whole; rows are deleted only in the partial month (and the default partition).
    """
    with connection.transaction():
        if upto_id is None:
            upto_id, _ = rollup_state(connection)
        deleted = sum(
            drop_partition(connection, name)
            for name, end in monthly_partitions(connection)
            if end <= before_ms and _all_at_most(connection, name, upto_id)
        )
        row = connection.execute(
            "WITH gone AS (DELETE FROM events WHERE ts < %s AND id <= %s"
            " RETURNING event_id, ts),"
            " ids AS (DELETE FROM event_ids i USING gone g"
            "  WHERE i.event_id = g.event_id AND i.ts = g.ts)"
            " SELECT COUNT(*) FROM gone",
            (before_ms, upto_id),
        ).fetchone()
    return deleted + int(row[0])


def monthly_partitions(connection: Any) -> list[tuple[str, int]]:
    """``(name, end_ms)`` of each monthly partition of ``events``, oldest first."""
    rows = connection.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('events') AND c.relname ~ '^events_y[0-9]{4}m[0-9]{2}$'"
    ).fetchall()
    found = []
    for (name,) in rows:
        year, month = int(name[8:12]), int(name[13:15])
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        found.append((str(name), int(end.timestamp()) * 1000))
    return sorted(found, key=lambda item: item[1])


def _all_at_most(connection: Any, name: str, upto_id: int) -> bool:
    sql = import_psycopg().sql
    row = connection.execute(
        sql.SQL("SELECT COALESCE(MAX(id), 0) FROM {}").format(sql.Identifier(name))
    ).fetchone()
    return int(row[0]) <= upto_id


def drop_partition(connection: Any, name: str) -> int:
    """Drop one monthly partition and its rows' ``event_ids`` (inside the caller's
    transaction); return how many events it held."""
    sql = import_psycopg().sql
    table = sql.Identifier(name)
    row = connection.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(table)).fetchone()
    connection.execute(
        sql.SQL(
            "DELETE FROM event_ids i USING {} p WHERE i.event_id = p.event_id AND i.ts = p.ts"
        ).format(table)
    )
    connection.execute(sql.SQL("ALTER TABLE events DETACH PARTITION {}").format(table))
    connection.execute(sql.SQL("DROP TABLE {}").format(table))
    logger.info("dropped partition %s (%d events)", name, int(row[0]))
    return int(row[0])
