"""Daily rollups of the SQLite event store: their tables and the aggregation job. Blocking I/O.

`aggregate()` folds the events stored since the last run (by row id, so late events are
never missed) into per-day tables. Every table is keyed by ``(blog_id, post_id, day)`` at
three levels: a post ``(b, p)``, a blog ``(b, 0)`` and everything ``(0, 0)`` (ids are
positive), so any scope reads at most one row per day and figure.

Distinct counts stay exact across days: ``rollup_entity_days`` keeps each entity (a
session, a post, a user at each level) once per day it joined, with ``prev_day``, the
previous day it joined (-1 for none). An entity joined within days ``[d1, d2]`` exactly once
on its first day there, the row whose ``prev_day < d1``; ``rollup_distinct`` counts those
rows per ``(day, prev_day)``, so a distinct count is one indexed sum. Peaks are recomputed
from raw events for every (post, day) that new events touch (see `tracks.figures.peak`).

Events without ``blog_id`` and ``post_id`` are not rolled up. Event kinds are recognised
by name suffix (``*_join``, ``*_leave``, ``*_blocked``, ``*_connection_error``).
"""

from __future__ import annotations

import logging
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of, duration_bucket, peak, visits

__all__ = [
    "ROLLUP_TABLES",
    "Aggregated",
    "aggregate",
    "compute_peaks",
    "create_rollup_tables",
    "kind_sql",
    "recompute_peaks",
    "rollup_state",
]

logger = logging.getLogger(__name__)

ROLLUP_VERSION = 1

ROLLUP_TABLES: Sequence[str] = (
    """CREATE TABLE IF NOT EXISTS rollup_state (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL, last_id INTEGER NOT NULL, rolled_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rollup_counts (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        joins INTEGER NOT NULL, blocked INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_errors (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        code TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day, code)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_durations (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day, bucket)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_peaks (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        sessions INTEGER NOT NULL, users INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rollup_peaks_day ON rollup_peaks (day)",
    """CREATE TABLE IF NOT EXISTS rollup_entity_days (
        kind TEXT NOT NULL, blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        entity NOT NULL, day INTEGER NOT NULL, prev_day INTEGER NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, entity, day)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_distinct (
        kind TEXT NOT NULL, blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        day INTEGER NOT NULL, prev_day INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, day, prev_day)) WITHOUT ROWID""",
    # Sessions a post ever had: an upper bound for any range, so top posts can stop early.
    """CREATE TABLE IF NOT EXISTS rollup_post_totals (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, sessions INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rollup_post_totals_sessions ON rollup_post_totals (sessions)",
    # Peaks are recomputed from one post's recent joins and leaves: a range, not its history.
    "CREATE INDEX IF NOT EXISTS events_post_ts ON events (blog_id, post_id, ts)",
    """CREATE TABLE IF NOT EXISTS rollup_open_posts (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id)) WITHOUT ROWID""",
)


def kind_sql(column: str = "name") -> str:
    """SQL giving an event's kind from its name: join, leave, blocked, error, or NULL."""
    return (
        f"CASE WHEN {column} LIKE '%\\_join' ESCAPE '\\' THEN 'join'"
        f" WHEN {column} LIKE '%\\_leave' ESCAPE '\\' THEN 'leave'"
        f" WHEN {column} LIKE '%\\_blocked' ESCAPE '\\' THEN 'blocked'"
        f" WHEN {column} LIKE '%\\_connection\\_error' ESCAPE '\\' THEN 'error' END"
    )


ERROR_CODE_SQL = (
    "COALESCE(CAST(COALESCE(json_extract(props, '$.error_code'),"
    " json_extract(props, '$.close_code'), json_extract(props, '$.code')) AS TEXT), 'unknown')"
)

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


def create_rollup_tables(connection: sqlite3.Connection) -> None:
    for statement in ROLLUP_TABLES:
        connection.execute(statement)
    connection.execute(
        "INSERT OR IGNORE INTO rollup_state (singleton, version, last_id, rolled_at)"
        " VALUES (1, ?, 0, 0)",
        (ROLLUP_VERSION,),
    )


def rollup_state(connection: sqlite3.Connection) -> tuple[int, int]:
    """``(last_id, rolled_at_ms)`` of the rollups; ``(0, 0)`` when there are none yet."""
    try:
        row = connection.execute("SELECT last_id, rolled_at FROM rollup_state").fetchone()
    except sqlite3.OperationalError:  # no rollup tables in this store yet
        return 0, 0
    return (int(row[0]), int(row[1])) if row else (0, 0)


def aggregate(
    connection: sqlite3.Connection, *, now_ms: int, chunk: int = 1_000_000
) -> Aggregated:
    """Fold every event stored since the last run into the rollups, ``chunk`` rows per
    transaction. The connection must be writable and in autocommit mode (`schema.connect`).
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
    last_id, _ = rollup_state(connection)
    newest = int(connection.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    while True:
        upto = min(last_id + chunk, newest)
        connection.execute("BEGIN IMMEDIATE")
        try:
            events, touched = _fold(connection, last_id, upto)
            touched |= _open_post_days(connection, now_ms)
            recomputed += recompute_peaks(connection, touched, now_ms=now_ms)
            connection.execute(
                "UPDATE rollup_state SET last_id = ?, rolled_at = ?", (upto, now_ms)
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        total += events
        last_id = upto
        if upto >= newest:
            break
    logger.info("rolled up %d events (through id %d)", total, last_id)
    return Aggregated(events=total, last_id=last_id, peaks_recomputed=recomputed)


def _bucket_or_none(value: object) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return duration_bucket(int(value))
    return None


def _fold(
    connection: sqlite3.Connection, after_id: int, upto_id: int
) -> tuple[int, set[tuple[int, int, int]]]:
    """Add events ``after_id < id <= upto_id`` to the additive and distinct rollups.

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
    touched: set[tuple[int, int, int]] = set()
    for blog_id, post_id, first, last in run(
        "SELECT blog_id, post_id,"
        " MIN(CASE WHEN kind = 'leave' THEN ts - COALESCE(duration_ms, 0) ELSE ts END),"
        f" MAX(CASE WHEN kind = 'join' THEN ts + {MAX_OPEN_MS} ELSE ts END)"
        " FROM batch WHERE kind IN ('join', 'leave') GROUP BY blog_id, post_id,"
        " ts / 86400000"
    ):
        for day in range(day_of(int(first)), day_of(int(last)) + 1):
            touched.add((int(blog_id), int(post_id), day))
    run("DROP TABLE temp.batch")
    return events, touched


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


def _open_post_days(connection: sqlite3.Connection, now_ms: int) -> set[tuple[int, int, int]]:
    """Posts with a join of the last 24 h that no leave matched: (post, day) through today.

    They stay open across midnight with no new event, so today's peak needs them. The
    set of such posts is saved for queries (`rollup_open_posts`).
    """
    since = now_ms - MAX_OPEN_MS
    rows = connection.execute(
        f"SELECT {kind_sql()} AS kind, blog_id, post_id, session_id, ts,"
        " json_extract(props, '$.duration_ms') FROM events"
        " WHERE ts >= ? AND (name LIKE '%\\_join' ESCAPE '\\' OR name LIKE '%\\_leave' ESCAPE '\\')"
        " AND blog_id IS NOT NULL AND post_id IS NOT NULL",
        (since,),
    ).fetchall()
    ended = {
        (blog, post, session, ts - (duration or 0))
        for kind, blog, post, session, ts, duration in rows
        if kind == "leave"
    }
    open_posts: dict[tuple[int, int], int] = {}
    for kind, blog, post, session, ts, _ in rows:
        if kind == "join" and (blog, post, session, ts) not in ended:
            key = (int(blog), int(post))
            open_posts[key] = min(open_posts.get(key, ts), ts)
    connection.execute("DELETE FROM rollup_open_posts")
    connection.executemany(
        "INSERT INTO rollup_open_posts (blog_id, post_id) VALUES (?, ?)", list(open_posts)
    )
    today = day_of(now_ms)
    return {
        (blog, post, day)
        for (blog, post), first in open_posts.items()
        for day in range(day_of(first), today + 1)
    }


def load_visits(
    connection: sqlite3.Connection, blog_id: int, post_id: int, first_day: int, *, now_ms: int
) -> list[tuple[object, int | None, int, int | None, str]]:
    """Joins and leaves of one post that can overlap days from ``first_day`` on."""
    rows = connection.execute(
        f"SELECT session_id, wp_user_id, ts, json_extract(props, '$.duration_ms'), {kind_sql()}"
        " FROM events WHERE blog_id = ? AND post_id = ? AND ts >= ?"
        " AND (name LIKE '%\\_join' ESCAPE '\\' OR name LIKE '%\\_leave' ESCAPE '\\')",
        (blog_id, post_id, first_day * DAY_MS - MAX_OPEN_MS),
    ).fetchall()
    return [(row[0], row[1], int(row[2]), row[3], str(row[4])) for row in rows]


def post_day_peaks(
    rows: Iterable[tuple[object, int | None, int, int | None, str]],
    days: Iterable[int],
    *,
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """Peak (sessions, users) of one post for each of ``days``, from `load_visits` rows."""
    joins = [(session, user, ts) for session, user, ts, _, kind in rows if kind == "join"]
    leaves = [
        (session, user, ts, int(duration) if isinstance(duration, int | float) else None)
        for session, user, ts, duration, kind in rows
        if kind == "leave"
    ]
    post_visits = visits(joins, leaves, now_ms=now_ms)
    return {
        day: peak(post_visits, day * DAY_MS, min((day + 1) * DAY_MS, max(now_ms, day * DAY_MS)))
        for day in days
    }


def compute_peaks(
    connection: sqlite3.Connection, touched: Iterable[tuple[int, int, int]], *, now_ms: int
) -> dict[tuple[int, int, int], tuple[int, int]]:
    """Peak (sessions, users) of each touched (blog, post, day) up to today, from raw events."""
    by_post: dict[tuple[int, int], set[int]] = defaultdict(set)
    for blog_id, post_id, day in touched:
        if day <= day_of(now_ms):
            by_post[(blog_id, post_id)].add(day)
    result: dict[tuple[int, int, int], tuple[int, int]] = {}
    for (blog_id, post_id), days in by_post.items():
        rows = load_visits(connection, blog_id, post_id, min(days), now_ms=now_ms)
        for day, figures in post_day_peaks(rows, days, now_ms=now_ms).items():
            result[(blog_id, post_id, day)] = figures
    return result


def recompute_peaks(
    connection: sqlite3.Connection, touched: Iterable[tuple[int, int, int]], *, now_ms: int
) -> int:
    """Recompute and store the peaks of ``touched`` (blog, post, day), then the blog and
    overall maxima of those days. Returns how many post-days were recomputed."""
    peaks = compute_peaks(connection, touched, now_ms=now_ms)
    connection.executemany(
        "INSERT INTO rollup_peaks (blog_id, post_id, day, sessions, users)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
        " sessions = excluded.sessions, users = excluded.users",
        [(*key, *figures) for key, figures in peaks.items()],
    )
    blog_days = {(blog_id, day) for blog_id, _, day in peaks}
    connection.executemany(
        "INSERT OR REPLACE INTO rollup_peaks (blog_id, post_id, day, sessions, users)"
        " SELECT ?, 0, ?, MAX(sessions), MAX(users) FROM rollup_peaks"
        " WHERE blog_id = ? AND post_id != 0 AND day = ?",
        [(blog_id, day, blog_id, day) for blog_id, day in blog_days],
    )
    connection.executemany(
        "INSERT OR REPLACE INTO rollup_peaks (blog_id, post_id, day, sessions, users)"
        " SELECT 0, 0, ?, MAX(sessions), MAX(users) FROM rollup_peaks"
        " WHERE blog_id != 0 AND post_id = 0 AND day = ?",
        [(day, day) for day in {day for _, day in blog_days}],
    )
    return len(peaks)
