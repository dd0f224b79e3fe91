"""Peaks of the PostgreSQL event store: recomputed from raw joins and leaves. Blocking psycopg.

The PostgreSQL side of `tracks.presence.sqlite_peaks` (same arithmetic, its
`post_day_peaks`): by the rollup job (`recompute_peaks`, stored in ``rollup_peaks``) and by
a query over events not rolled up yet (`day_peaks`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of
from tracks.presence.sqlite_peaks import post_day_peaks
from tracks.presence.stats import Scope

__all__ = ["compute_peaks", "day_peaks", "recompute_peaks"]

# The same expressions as `tracks.presence.postgresql_rollup` (imported from there would
# be circular); kept equal by the tests, which compare both stores' figures.
_KIND = (
    "CASE WHEN right(name, 5) = '_join' THEN 'join'"
    " WHEN right(name, 6) = '_leave' THEN 'leave' END"
)
_SESSION = "CASE WHEN props ? 'session_id' THEN session_id ELSE 's' || session_id END"
_DURATION = (
    "CASE WHEN jsonb_typeof(props -> 'duration_ms') = 'number'"
    " THEN (props ->> 'duration_ms')::float8 END"
)


def _load_visits(
    connection: Any, first_days: dict[tuple[int, int], int]
) -> dict[tuple[int, int], list[tuple[object, int | None, int, float | None, str]]]:
    """Joins and leaves of each post that can overlap days from its first day on: one
    query for all the posts (one round trip, not one per post)."""
    keys = sorted(first_days)
    rows = connection.execute(
        f"SELECT e.blog_id, e.post_id, {_SESSION} AS session, wp_user_id, ts,"
        f" {_DURATION} AS duration, {_KIND} AS kind"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) AS t (b, p, since)"
        " JOIN events AS e ON e.blog_id = t.b AND e.post_id = t.p AND e.ts >= t.since"
        f" WHERE ({_KIND}) IS NOT NULL",
        (
            [blog for blog, _ in keys],
            [post for _, post in keys],
            [first_days[key] * DAY_MS - MAX_OPEN_MS for key in keys],
        ),
    ).fetchall()
    found: dict[tuple[int, int], list[tuple[object, int | None, int, float | None, str]]] = {
        key: [] for key in keys
    }
    for blog, post, session, user, ts, duration, kind in rows:
        found[(int(blog), int(post))].append((session, user, int(ts), duration, str(kind)))
    return found


def compute_peaks(
    connection: Any, touched: Iterable[tuple[int, int, int]], *, now_ms: int
) -> dict[tuple[int, int, int], tuple[int, int]]:
    """Peak (sessions, users) of each touched (blog, post, day) up to today, from raw events."""
    by_post: dict[tuple[int, int], set[int]] = defaultdict(set)
    for blog_id, post_id, day in touched:
        if day <= day_of(now_ms):
            by_post[(blog_id, post_id)].add(day)
    if not by_post:
        return {}
    visits = _load_visits(connection, {key: min(days) for key, days in by_post.items()})
    result: dict[tuple[int, int, int], tuple[int, int]] = {}
    for (blog_id, post_id), days in by_post.items():
        rows = visits[(blog_id, post_id)]
        for day, figures in post_day_peaks(rows, days, now_ms=now_ms).items():  # type: ignore[arg-type]
            result[(blog_id, post_id, day)] = figures
    return result


def recompute_peaks(
    connection: Any, touched: Iterable[tuple[int, int, int]], *, now_ms: int
) -> int:
    """Recompute and store the peaks of ``touched`` (blog, post, day), then the blog and
    overall maxima of those days. Returns how many post-days were recomputed."""
    peaks = compute_peaks(connection, touched, now_ms=now_ms)
    upsert = (
        "INSERT INTO rollup_peaks (blog_id, post_id, day, sessions, users)"
        " {} ON CONFLICT (blog_id, post_id, day) DO UPDATE SET"
        " sessions = excluded.sessions, users = excluded.users"
    )
    blog_days = sorted({(blog_id, day) for blog_id, _, day in peaks})
    with connection.cursor() as cursor:
        cursor.executemany(
            upsert.format("VALUES (%s, %s, %s, %s, %s)"),
            [(*key, *figures) for key, figures in sorted(peaks.items())],
        )
        cursor.executemany(
            upsert.format(
                "SELECT %s, 0, %s, MAX(sessions), MAX(users) FROM rollup_peaks"
                " WHERE blog_id = %s AND post_id != 0 AND day = %s"
            ),
            [(blog_id, day, blog_id, day) for blog_id, day in blog_days],
        )
        cursor.executemany(
            upsert.format(
                "SELECT 0, 0, %s, MAX(sessions), MAX(users) FROM rollup_peaks"
                " WHERE blog_id != 0 AND post_id = 0 AND day = %s"
            ),
            [(day, day) for day in sorted({day for _, day in blog_days})],
        )
    return len(peaks)


def day_peaks(
    connection: Any,
    scope: Scope,
    touched: Iterable[tuple[int, int, int]],
    first: int,
    last: int,
    *,
    rolled_at: int,
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """The peak (sessions, users) of ``scope`` on each day in ``[first, last]`` whose peak
    may differ from the stored one (see `tracks.presence.sqlite_peaks.day_peaks`)."""
    touched = set(touched)
    if rolled_at:
        for blog, post in connection.execute("SELECT blog_id, post_id FROM rollup_open_posts"):
            if scope.contains(blog, post):
                for day in range(
                    max(day_of(rolled_at) + 1, first), min(day_of(now_ms), last) + 1
                ):
                    touched.add((blog, post, day))
    recomputed: defaultdict[int, dict[tuple[int, int], tuple[int, int]]] = defaultdict(dict)
    for (blog, post, day), figures in compute_peaks(connection, touched, now_ms=now_ms).items():
        recomputed[day][(blog, post)] = figures
    peaks: dict[int, tuple[int, int]] = {}
    for day, posts in recomputed.items():
        # Recomputed post peaks replace the stored ones; the other posts keep theirs.
        stored = _stored_post_peaks(connection, scope, day) if rolled_at else {}
        post_peaks = {**stored, **posts}
        peaks[day] = (
            max(sessions for sessions, _ in post_peaks.values()),
            max(users for _, users in post_peaks.values()),
        )
    return peaks


def _stored_post_peaks(
    connection: Any, scope: Scope, day: int
) -> dict[tuple[int, int], tuple[int, int]]:
    clauses, params = ["day = %s", "post_id != 0"], [day]
    if scope.blog_id is not None:
        clauses.append("blog_id = %s")
        params.append(scope.blog_id)
    if scope.post_id is not None:
        clauses.append("post_id = %s")
        params.append(scope.post_id)
    rows = connection.execute(
        f"SELECT blog_id, post_id, sessions, users FROM rollup_peaks WHERE {' AND '.join(clauses)}",
        params,
    )
    return {(int(b), int(p)): (int(s), int(u)) for b, p, s, u in rows}
