"""Daily rollups of the SQLite event store: the aggregation job that fills them. Blocking I/O.

`aggregate()` folds the events stored since the last run (by row id, so late events are
never missed) into per-day tables (`tracks.presence.sqlite_schema.ROLLUP_TABLES`). Every
table is keyed by ``(blog_id, post_id, day)`` at three levels: a post ``(b, p)``, a blog
``(b, 0)`` and everything ``(0, 0)`` (ids are positive), so any scope reads at most one row
per day and figure.

Distinct counts stay exact across days: ``rollup_entity_days`` keeps each entity (a
session, a post, a user at each level) once per day it joined, with ``prev_day``, the
previous day it joined (-1 for none). An entity joined within days ``[d1, d2]`` exactly once
on its first day there, the row whose ``prev_day < d1``; ``rollup_distinct`` counts those
rows per ``(day, prev_day)``, so a distinct count is one indexed sum. Peaks are recomputed
from raw events for every (post, day) that new events touch (see `tracks.presence.figures.peak`).

Events without ``blog_id`` and ``post_id`` are not rolled up. Event kinds are recognised
by name suffix (``*_join``, ``*_leave``, ``*_blocked``, ``*_connection_error``).
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from tracks.presence.figures import (
    DAY_MS,
    MAX_OPEN_MS,
    day_of,
    duration_bucket,
)
from tracks.presence.sqlite_peaks import compute_peaks, store_peaks
from tracks.presence.sqlite_schema import (
    ERROR_CODE_SQL,
    create_rollup_tables,
    delete_events,
    kind_sql,
)
from tracks.presence.stats import AGGREGATE_CHUNK

__all__ = [
    "Aggregated",
    "aggregate",
    "prune",
    "rollup_state",
]

logger = logging.getLogger(__name__)

# Each batch row at three levels: the post, its blog (post 0), everything (0, 0).
_LEVELS = (
    "JOIN (SELECT 0 AS level UNION ALL SELECT 1 UNION ALL SELECT 2) AS levels"
)
_B = "CASE WHEN level = 2 THEN 0 ELSE blog_id END"
_P = "CASE WHEN level = 0 THEN post_id ELSE 0 END"


@dataclass(frozen=True, slots=True)
class Aggregated:
    """What one `aggregate()` run did."""

    events: int
    last_id: int
    peaks_recomputed: int


def rollup_state(connection: sqlite3.Connection) -> tuple[int, int]:
    """``(last_id, rolled_at_ms)`` of the rollups; ``(0, 0)`` when there are none yet."""
    try:
        row = connection.execute("SELECT last_id, rolled_at FROM rollup_state").fetchone()
    except sqlite3.OperationalError:  # no rollup tables in this store yet
        return 0, 0
    return (int(row[0]), int(row[1])) if row else (0, 0)


def aggregate(
    connection: sqlite3.Connection, *, now_ms: int, chunk: int = AGGREGATE_CHUNK
) -> Aggregated:
    """Fold every event stored since the last run into the rollups, ``chunk`` rows at a time.

    What takes long is read first, on a snapshot and without the store's write lock: the
    chunk's events, the posts still open, the peaks of every post-day they touch. The lock
    is then held only to write the results, so the event writer, which waits for it at
    most its busy timeout, is not held up (it was: a rollup of 40k events held it 3.3 s on
    an idle machine, past 5 s under load). A run that finds another one folded the same
    events meanwhile writes nothing of its own and goes on from where that one ended.
    Each chunk recomputes the peaks of the post-days its events touch; the last one also
    those of the posts still open (found once a run, not once a chunk).
    The connection must be writable and in autocommit mode (`schema.connect`).
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        create_rollup_tables(connection)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    connection.create_function("duration_bucket", 1, _bucket_or_none, deterministic=True)
    total = recomputed = 0
    newest = int(connection.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    while True:  # bounded: each pass ends at `upto`, which only grows up to `newest`
        last_id, _ = rollup_state(connection)
        upto = max(last_id, min(last_id + chunk, newest))
        final = upto >= newest  # the open posts are the run's last pass's business
        connection.execute("BEGIN")  # a read snapshot: the event writer goes on meanwhile
        try:
            events, touched = _read_batch(connection, last_id, upto)
            open_posts = _open_posts(connection, now_ms) if final else None
            if open_posts is not None:
                touched |= _open_days(open_posts, now_ms)
            peaks = compute_peaks(connection, touched, now_ms=now_ms)
        finally:
            connection.execute("COMMIT")  # nothing written but the temporary batch
        connection.execute("BEGIN IMMEDIATE")
        try:
            if rollup_state(connection)[0] == last_id:
                _fold_batch(connection)
                if open_posts is not None:
                    _store_open_posts(connection, open_posts)
                recomputed += store_peaks(connection, peaks)
                connection.execute(
                    "UPDATE rollup_state SET last_id = ?, rolled_at = ?", (upto, now_ms)
                )
                total += events
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.execute("DROP TABLE IF EXISTS temp.batch")
        connection.execute("COMMIT")
        if final:
            break
    last_id, _ = rollup_state(connection)
    logger.info("rolled up %d events (through id %d)", total, last_id)
    return Aggregated(events=total, last_id=last_id, peaks_recomputed=recomputed)


def prune(connection: sqlite3.Connection, *, before_ms: int) -> int:
    """Delete the raw events older than ``before_ms`` that the rollups hold (row id up to
    their ``last_id``) in one transaction; return how many. Writable, autocommit
    connection, as for `aggregate`."""
    last_id, _ = rollup_state(connection)
    return delete_events(connection, until_ms=before_ms, upto_id=last_id)


def _bucket_or_none(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return duration_bucket(int(value))
    return None


def _read_batch(
    connection: sqlite3.Connection, after_id: int, upto_id: int
) -> tuple[int, set[tuple[int, int, int]]]:
    """Read events ``after_id < id <= upto_id`` into the temporary table ``batch`` (the
    store's write lock is not needed for it).

    Returns how many events were read and the (blog, post, day) whose peaks they touch.
    """
    run = connection.execute
    run("DROP TABLE IF EXISTS temp.batch")
    run(
        "CREATE TEMP TABLE batch AS SELECT kind, blog_id, post_id, session_id, wp_user_id, ts,"
        f" ts / {DAY_MS} AS day,"
        " CASE WHEN kind = 'leave' THEN json_extract(props, '$.duration_ms') END AS duration_ms,"
        " CASE WHEN kind = 'leave' THEN duration_bucket(json_extract(props, '$.duration_ms'))"
        " END AS bucket,"
        f" CASE WHEN kind = 'error' THEN {ERROR_CODE_SQL} END AS code"
        f" FROM (SELECT *, {kind_sql()} AS kind FROM events WHERE id > ? AND id <= ?)"
        " WHERE kind IS NOT NULL AND blog_id IS NOT NULL AND post_id IS NOT NULL",
        (after_id, upto_id),
    )
    events = int(run("SELECT COUNT(*) FROM batch").fetchone()[0])
    touched: set[tuple[int, int, int]] = set()
    for blog_id, post_id, first, last in run(
        "SELECT blog_id, post_id,"
        " MIN(CASE WHEN kind = 'leave' THEN ts - COALESCE(duration_ms, 0) ELSE ts END),"
        f" MAX(CASE WHEN kind = 'join' THEN ts + {MAX_OPEN_MS} ELSE ts END)"
        " FROM batch WHERE kind IN ('join', 'leave') GROUP BY blog_id, post_id, day"
    ):
        for day in range(day_of(int(first)), day_of(int(last)) + 1):
            touched.add((int(blog_id), int(post_id), day))
    return events, touched


def _fold_batch(connection: sqlite3.Connection) -> None:
    """Add the events of ``batch`` (`_read_batch`) to the additive and distinct rollups."""
    run = connection.execute
    run(
        "INSERT INTO rollup_counts (blog_id, post_id, day, joins, blocked)"
        f" SELECT {_B} AS b, {_P} AS p, day, SUM(kind = 'join'), SUM(kind = 'blocked')"
        f" FROM batch {_LEVELS} WHERE kind IN ('join', 'blocked') GROUP BY b, p, day"
        " ON CONFLICT DO UPDATE SET joins = joins + excluded.joins,"
        " blocked = blocked + excluded.blocked"
    )
    run(
        "INSERT INTO rollup_errors (blog_id, post_id, day, code, n)"
        f" SELECT {_B} AS b, {_P} AS p, day, code, COUNT(*) FROM batch {_LEVELS}"
        " WHERE kind = 'error' GROUP BY b, p, day, code"
        " ON CONFLICT DO UPDATE SET n = n + excluded.n"
    )
    run(
        "INSERT INTO rollup_durations (blog_id, post_id, day, bucket, n)"
        f" SELECT {_B} AS b, {_P} AS p, day, bucket, COUNT(*)"
        f" FROM batch {_LEVELS} WHERE kind = 'leave' AND bucket IS NOT NULL"
        " GROUP BY b, p, day, bucket ON CONFLICT DO UPDATE SET n = n + excluded.n"
    )
    _fold_distinct(connection)


def _fold_distinct(connection: sqlite3.Connection) -> None:
    run = connection.execute
    run("DROP TABLE IF EXISTS temp.new_days")
    # Sessions and posts are unique per post; users are distinct at each level separately.
    run(
        "CREATE TEMP TABLE new_days AS"
        " SELECT DISTINCT 'session' AS kind, blog_id, post_id, session_id AS entity, day"
        " FROM batch WHERE kind = 'join' AND session_id IS NOT NULL"
        " UNION SELECT DISTINCT 'post', blog_id, post_id, 0, day FROM batch WHERE kind = 'join'"
        f" UNION SELECT DISTINCT 'user', {_B}, {_P}, wp_user_id, day FROM batch {_LEVELS}"
        " WHERE kind = 'join' AND wp_user_id IS NOT NULL"
    )
    run(
        "DELETE FROM new_days WHERE EXISTS (SELECT 1 FROM rollup_entity_days e"
        " WHERE e.kind = new_days.kind AND e.blog_id = new_days.blog_id"
        " AND e.post_id = new_days.post_id AND e.entity = new_days.entity"
        " AND e.day = new_days.day)"
    )
    run("DROP TABLE IF EXISTS temp.touched")
    run(
        "CREATE TEMP TABLE touched AS SELECT DISTINCT kind, blog_id, post_id, entity"
        " FROM new_days"
    )
    run("DROP TABLE IF EXISTS temp.delta")
    # The touched entities' rows before (counted -1) and after (+1) relinking prev_day.
    run(
        "CREATE TEMP TABLE delta AS SELECT e.kind, e.blog_id, e.post_id, e.day, e.prev_day,"
        " -1 AS n FROM touched t JOIN rollup_entity_days e ON e.kind = t.kind"
        " AND e.blog_id = t.blog_id AND e.post_id = t.post_id AND e.entity = t.entity"
    )
    run(
        "INSERT INTO rollup_entity_days (kind, blog_id, post_id, entity, day, prev_day)"
        " SELECT kind, blog_id, post_id, entity, day, -1 FROM new_days"
    )
    run("DROP TABLE IF EXISTS temp.relinked")
    run(
        "CREATE TEMP TABLE relinked AS SELECT e.kind, e.blog_id, e.post_id, e.entity, e.day,"
        " COALESCE(LAG(e.day) OVER (PARTITION BY e.kind, e.blog_id, e.post_id, e.entity"
        " ORDER BY e.day), -1) AS prev_day"
        " FROM touched t JOIN rollup_entity_days e ON e.kind = t.kind"
        " AND e.blog_id = t.blog_id AND e.post_id = t.post_id AND e.entity = t.entity"
    )
    run(
        "UPDATE rollup_entity_days SET prev_day = r.prev_day FROM relinked r"
        " WHERE rollup_entity_days.kind = r.kind AND rollup_entity_days.blog_id = r.blog_id"
        " AND rollup_entity_days.post_id = r.post_id AND rollup_entity_days.entity = r.entity"
        " AND rollup_entity_days.day = r.day AND rollup_entity_days.prev_day != r.prev_day"
    )
    run(
        "INSERT INTO delta SELECT kind, blog_id, post_id, day, prev_day, 1 FROM relinked"
    )
    run(
        "INSERT INTO rollup_distinct (kind, blog_id, post_id, day, prev_day, n)"
        " SELECT kind, b, p, day, prev_day, SUM(n) AS total FROM ("
        "  SELECT kind, blog_id AS b, post_id AS p, day, prev_day, n FROM delta"
        "  UNION ALL SELECT kind, blog_id, 0, day, prev_day, n FROM delta"
        "   WHERE kind != 'user'"
        "  UNION ALL SELECT kind, 0, 0, day, prev_day, n FROM delta WHERE kind != 'user')"
        " GROUP BY kind, b, p, day, prev_day HAVING total != 0"
        " ON CONFLICT DO UPDATE SET n = n + excluded.n"
    )
    run(
        "INSERT INTO rollup_post_totals (blog_id, post_id, sessions)"
        " SELECT blog_id, post_id, SUM(n) AS total FROM delta"
        " WHERE kind = 'session' AND prev_day = -1 GROUP BY blog_id, post_id HAVING total != 0"
        " ON CONFLICT DO UPDATE SET sessions = sessions + excluded.sessions"
    )
    run("DELETE FROM rollup_distinct WHERE n = 0")
    for table in ("new_days", "touched", "delta", "relinked"):
        run(f"DROP TABLE temp.{table}")


# Joins of the last 24 h (from ``?1``) that no leave of theirs closed (a leave closes the
# join of its session at ``ts - duration_ms``), earliest first per post: the joins EXCEPT the
# leaves' starts (a set difference, sorted once; NULL session ids compare equal in it). Done
# by SQLite: in Python it read every join and leave of the last 24 h at each run, a memory
# peak that grew with the day's traffic (and the server's resident memory with it).
_OPEN_POSTS_SQL = (
    "SELECT blog_id, post_id, MIN(ts) FROM ("
    " SELECT blog_id, post_id, session_id, ts FROM events"
    f" WHERE ts >= ?1 AND blog_id IS NOT NULL AND post_id IS NOT NULL AND {kind_sql()} = 'join'"
    " EXCEPT"
    " SELECT blog_id, post_id, session_id, ts - CASE WHEN json_type(props, '$.duration_ms')"
    " IN ('integer', 'real') THEN json_extract(props, '$.duration_ms') ELSE 0 END FROM events"
    f" WHERE ts >= ?1 AND blog_id IS NOT NULL AND post_id IS NOT NULL AND {kind_sql()} = 'leave'"
    ") GROUP BY blog_id, post_id"
)


def _open_posts(connection: sqlite3.Connection, now_ms: int) -> dict[tuple[int, int], int]:
    """Posts with a join of the last 24 h that no leave matched, with their earliest such
    join. They stay open across midnight with no new event, so today's peak needs them."""
    return {
        (int(blog), int(post)): int(first)
        for blog, post, first in connection.execute(_OPEN_POSTS_SQL, (now_ms - MAX_OPEN_MS,))
    }


def _open_days(open_posts: dict[tuple[int, int], int], now_ms: int) -> set[tuple[int, int, int]]:
    """The open posts' (blog, post, day) from their earliest open join through today."""
    today = day_of(now_ms)
    return {
        (blog, post, day)
        for (blog, post), first in open_posts.items()
        for day in range(day_of(first), today + 1)
    }


def _store_open_posts(
    connection: sqlite3.Connection, open_posts: dict[tuple[int, int], int]
) -> None:
    """Save the set of open posts for queries (``rollup_open_posts``)."""
    connection.execute("DELETE FROM rollup_open_posts")
    connection.executemany(
        "INSERT INTO rollup_open_posts (blog_id, post_id) VALUES (?, ?)", list(open_posts)
    )
