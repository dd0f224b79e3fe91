"""Peaks of the SQLite event store: recomputed from raw joins and leaves. Blocking `sqlite3`.

A peak (most sessions and users open at once in a post) is the one figure that does not
add up across parts, so it is recomputed from one post's joins and leaves wherever new
events may have moved it: by `tracks.presence.rollup.aggregate` (`compute_peaks` on a read
snapshot, then `store_peaks` into ``rollup_peaks``) and by a query over events not rolled up
yet (`day_peaks`). The arithmetic is `tracks.presence.figures.visits` and `peak`.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterable

from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of, peak, visits
from tracks.presence.sqlite_schema import kind_sql
from tracks.presence.stats import Scope

__all__ = ["compute_peaks", "day_peaks", "load_visits", "post_day_peaks", "store_peaks"]


def load_visits(
    connection: sqlite3.Connection, blog_id: int, post_id: int, first_day: int, *, now_ms: int
) -> list[tuple[object, int | None, int, int | None, str]]:
    """Joins and leaves of one post that can overlap days from ``first_day`` on."""
    rows = connection.execute(
        "SELECT session_id, wp_user_id, ts, json_extract(props, '$.duration_ms'), kind"
        f" FROM (SELECT *, {kind_sql()} AS kind FROM events"
        " WHERE blog_id = ? AND post_id = ? AND ts >= ?) WHERE kind IN ('join', 'leave')",
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


def store_peaks(
    connection: sqlite3.Connection, peaks: dict[tuple[int, int, int], tuple[int, int]]
) -> int:
    """Store `compute_peaks`' figures, then the blog and overall maxima of those days.
    Returns how many post-days were stored."""
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


def day_peaks(
    connection: sqlite3.Connection,
    scope: Scope,
    touched: Iterable[tuple[int, int, int]],
    first: int,
    last: int,
    *,
    rolled_at: int,
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """The peak (sessions, users) of ``scope`` on each day in ``[first, last]`` whose
    peak may differ from the stored one: the ``touched`` (blog, post, day) of events not
    rolled up yet and, after a rollup (``rolled_at``), the days begun since then for
    posts with visits open at that time."""
    touched = set(touched)
    if rolled_at:
        for blog, post in connection.execute(
            "SELECT blog_id, post_id FROM rollup_open_posts"
        ):
            if scope.contains(blog, post):
                # The last rollup saw their visits open until then; only a day begun
                # since can hold a peak it has not (new visits come with raw events).
                for day in range(
                    max(day_of(rolled_at) + 1, first), min(day_of(now_ms), last) + 1
                ):
                    touched.add((blog, post, day))
    recomputed: defaultdict[int, dict[tuple[int, int], tuple[int, int]]] = defaultdict(dict)
    for (blog, post, day), figures in compute_peaks(
        connection, touched, now_ms=now_ms
    ).items():
        recomputed[day][(blog, post)] = figures
    peaks: dict[int, tuple[int, int]] = {}
    for day, posts in recomputed.items():
        # Recomputed post peaks replace the stored ones; the other posts keep theirs.
        post_peaks = {**(_stored_post_peaks(connection, scope, day) if rolled_at else {}), **posts}
        peaks[day] = (
            max(sessions for sessions, _ in post_peaks.values()),
            max(users for _, users in post_peaks.values()),
        )
    return peaks

def _stored_post_peaks(
    connection: sqlite3.Connection, scope: Scope, day: int
) -> dict[tuple[int, int], tuple[int, int]]:
    clauses, params = ["day = ?", "post_id != 0"], [day]
    if scope.blog_id is not None:
        clauses.append("blog_id = ?")
        params.append(scope.blog_id)
    if scope.post_id is not None:
        clauses.append("post_id = ?")
        params.append(scope.post_id)
    rows = connection.execute(
        f"SELECT blog_id, post_id, sessions, users FROM rollup_peaks"
        f" WHERE {' AND '.join(clauses)}",
        params,
    )
    return {(int(b), int(p)): (int(s), int(u)) for b, p, s, u in rows}
