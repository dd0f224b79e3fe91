"""Peaks of the PostgreSQL event store: recomputed from raw joins and leaves. Blocking psycopg.

The PostgreSQL side of `tracks.presence.sqlite_peaks` (same arithmetic, its
`post_day_peaks`): by the rollup job (`recompute_peaks`, stored in ``rollup_peaks``) and by
a query over events not rolled up yet (`day_peaks`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of
from tracks.presence.raw_events import RawEvent, touched_post_days
from tracks.presence.sqlite_peaks import post_day_peaks
from tracks.presence.stats import Scope

__all__ = ["compute_peaks", "day_peaks", "fresh_touches", "recompute_peaks"]

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


def fresh_touches(
    raw: Iterable[RawEvent], first: int, last: int, *, now_ms: int
) -> Counter[tuple[int, int, int]]:
    """How many of the events ``raw`` touch each (blog, post, day) of ``[first, last]``
    (the days of `tracks.presence.raw_events.touched_post_days`, counted per event)."""
    touches: Counter[tuple[int, int, int]] = Counter()
    for event in raw:
        if event.kind in ("join", "leave"):
            touches.update(touched_post_days((event,), first, last, now_ms=now_ms))
    return touches


def day_peaks(
    connection: Any,
    scope: Scope,
    touched: Mapping[tuple[int, int, int], int],
    first: int,
    last: int,
    *,
    rolled_at: int,
    now_ms: int,
) -> dict[int, tuple[int, int]]:
    """The peak (sessions, users) of ``scope`` on each day in ``[first, last]`` whose peak
    may differ from the stored one (see `tracks.presence.sqlite_peaks.day_peaks`).

    ``touched``: how many events not rolled up yet touch each (blog, post, day)
    (`fresh_touches`). Each such event adds at most one visit to its post (a join or a leave
    without its join) and can only shorten the others, so it lifts the post's peak by at most
    one session and one user: a touched post whose stored peak plus its touches cannot beat
    the other posts' stored maximum that day cannot change the day's peak, and is not
    recomputed. Only the posts near the top are read from the raw events, not every touched
    one. Not bounded so (recomputed whatever): posts whose visits were open at the last
    rollup, on the days begun since, which have no stored peak yet, and everything before a
    first rollup.
    """
    today = day_of(now_ms)
    counts = {key: n for key, n in touched.items() if key[2] <= today}
    exact: set[tuple[int, int, int]] = set()
    if rolled_at:
        for blog, post in connection.execute("SELECT blog_id, post_id FROM rollup_open_posts"):
            if scope.contains(blog, post):
                for day in range(max(day_of(rolled_at) + 1, first), min(today, last) + 1):
                    exact.add((blog, post, day))
    else:
        exact.update(counts)
    days = sorted({day for _, _, day in counts.keys() | exact})
    if not days:
        return {}
    best: dict[int, tuple[int, int]] = {}
    if rolled_at:
        candidates = counts.keys() | exact
        best = _other_posts_peaks(connection, scope, candidates, days)
        stored = _stored_peaks(connection, candidates - exact)
        for key, n in counts.items():
            sessions, users = stored.get(key, (0, 0))
            day_best = best.get(key[2], (0, 0))
            if sessions + n > day_best[0] or users + n > day_best[1]:
                exact.add(key)
    peaks = {day: best.get(day, (0, 0)) for day in days}
    for (_, _, day), (sessions, users) in compute_peaks(connection, exact, now_ms=now_ms).items():
        peaks[day] = (max(peaks[day][0], sessions), max(peaks[day][1], users))
    return peaks


def _other_posts_peaks(
    connection: Any, scope: Scope, touched: Iterable[tuple[int, int, int]], days: list[int]
) -> dict[int, tuple[int, int]]:
    """The stored maximum (sessions, users) of each of ``days`` over the scope's posts that
    ``touched`` does not name on that day (a day without such posts is missing)."""
    keys = sorted(touched)
    clauses = ["r.post_id != 0"]
    params: list[object] = []
    if scope.blog_id is not None:
        clauses.append("r.blog_id = %s")
        params.append(scope.blog_id)
    if scope.post_id is not None:
        clauses.append("r.post_id = %s")
        params.append(scope.post_id)
    where = " AND ".join(clauses)
    # Each walks one of the (day, peak DESC) indexes from the top and stops at the first
    # post not touched: a few rows, not the day's thousands (a blog's: its own few posts).
    best = (
        "(SELECT r.{0} FROM rollup_peaks AS r WHERE r.day = d.day AND {1}"
        " AND NOT EXISTS (SELECT 1 FROM touched AS t WHERE t.b = r.blog_id"
        " AND t.p = r.post_id AND t.d = r.day) ORDER BY r.{0} DESC LIMIT 1)"
    )
    rows = connection.execute(
        "WITH touched AS MATERIALIZED (SELECT * FROM"
        " unnest(%s::bigint[], %s::bigint[], %s::integer[]) AS t (b, p, d))"
        f" SELECT d.day, {best.format('sessions', where)}, {best.format('users', where)}"
        " FROM unnest(%s::integer[]) AS d (day)",
        (
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            *params, *params, days,
        ),
    )
    return {
        int(day): (int(sessions), int(users))
        for day, sessions, users in rows
        if sessions is not None
    }


def _stored_peaks(
    connection: Any, keys: Iterable[tuple[int, int, int]]
) -> dict[tuple[int, int, int], tuple[int, int]]:
    """The stored peak (sessions, users) of each of the (blog, post, day) ``keys`` that has one."""
    keys = sorted(keys)
    if not keys:
        return {}
    rows = connection.execute(
        "SELECT r.blog_id, r.post_id, r.day, r.sessions, r.users"
        " FROM unnest(%s::bigint[], %s::bigint[], %s::integer[]) AS t (b, p, d)"
        " JOIN rollup_peaks AS r ON r.blog_id = t.b AND r.post_id = t.p AND r.day = t.d",
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
    )
    return {(int(b), int(p), int(d)): (int(s), int(u)) for b, p, d, s, u in rows}
