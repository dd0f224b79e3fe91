"""The rollup reads of the PostgreSQL stats store (`tracks.presence.postgresql`). Blocking.

Each function takes ``run``, the store's ``execute`` (which stops a cancelled query), and
answers one part of the figures from the rollup tables: the days' and the range's figures,
the top posts' session counts, and which raw-joined entities the rollups already hold.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tracks.presence.raw_events import EntityKey, rollup_days, rollup_total
from tracks.presence.stats import DayFigures, Scope

__all__ = ["Run", "held_entities", "rollup_figures", "rollup_sessions", "rollup_top_posts"]

Run = Callable[..., Any]
"""Executes a query with its parameters and returns the cursor."""

_WHERE = "blog_id = %s AND post_id = %s AND day BETWEEN %s AND %s"
_DISTINCT_KINDS = "kind IN ('session', 'user', 'post')"


def rollup_figures(
    run: Run, scope: Scope, first: int, last: int
) -> tuple[dict[int, DayFigures], DayFigures]:
    """The rollups' figures of each day in ``[first, last]`` and of the whole range."""
    key = (*scope.level_key, first, last)
    counts = {
        int(day): (int(joins), int(blocked))
        for day, joins, blocked in run(
            f"SELECT day, joins, blocked FROM rollup_counts WHERE {_WHERE}", key
        )
    }
    errors: defaultdict[int, Counter[str]] = defaultdict(Counter)
    range_errors: Counter[str] = Counter()
    for day, code, n in run(
        f"SELECT day, code, n FROM rollup_errors WHERE {_WHERE}", key
    ):
        errors[day][code] = int(n)
        range_errors[code] += int(n)
    durations: defaultdict[int, Counter[int]] = defaultdict(Counter)
    range_durations: Counter[int] = Counter()
    # Binary: ints arrive as ints, which matters over tens of thousands of rows.
    for day, bucket, n in run(
        f"SELECT day, bucket, n FROM rollup_durations WHERE {_WHERE}", key, binary=True
    ):
        durations[day][bucket] = n
        range_durations[bucket] += n
    peaks = {
        int(day): (int(sessions), int(users))
        for day, sessions, users in run(
            f"SELECT day, sessions, users FROM rollup_peaks WHERE {_WHERE}", key
        )
    }
    distinct: defaultdict[int, Counter[str]] = defaultdict(Counter)
    for kind, day, n in run(
        f"SELECT kind, day, SUM(n) FROM rollup_distinct WHERE {_DISTINCT_KINDS}"
        f" AND {_WHERE} GROUP BY kind, day",
        key,
    ):
        distinct[day][kind] = int(n)
    range_distinct = {
        kind: int(n)
        for kind, n in run(
            f"SELECT kind, SUM(n) FROM rollup_distinct WHERE {_DISTINCT_KINDS}"
            f" AND {_WHERE} AND prev_day < %s GROUP BY kind",
            (*key, first),
        )
    }
    return rollup_days(
        counts=counts, peaks=peaks, distinct=distinct, durations=durations, errors=errors
    ), rollup_total(
        counts=counts, distinct=range_distinct, durations=range_durations, errors=range_errors
    )

def rollup_top_posts(
    run: Run, scope: Scope, first: int, last: int, *, limit: int
) -> Counter[tuple[int, int]]:
    """Exact rollup session counts of enough posts that raw additions cannot lift an
    unlisted post above the cut (``4 * limit`` of the best, ties by id)."""
    wanted = limit * 4
    if scope.blog_id is not None:
        clauses, params = ["blog_id = %s", "post_id != 0"], [scope.blog_id]
        if scope.post_id is not None:
            clauses.append("post_id = %s")
            params.append(scope.post_id)
        rows = run(
            "SELECT blog_id, post_id, SUM(n) AS sessions FROM rollup_distinct"
            f" WHERE kind = 'session' AND {' AND '.join(clauses)}"
            " AND day BETWEEN %s AND %s AND prev_day < %s GROUP BY blog_id, post_id"
            " ORDER BY sessions DESC, blog_id, post_id LIMIT %s",
            [*params, first, last, first, wanted],
        )
        return Counter({(int(b), int(p)): int(n) for b, p, n in rows})
    # Everything: walk posts by their all-time sessions (an upper bound for any range)
    # and stop once the bound falls below the best `wanted` exact counts.
    found: Counter[tuple[int, int]] = Counter()
    offset = 0
    while True:
        batch = run(
            "SELECT blog_id, post_id, sessions FROM rollup_post_totals"
            " ORDER BY sessions DESC, blog_id, post_id LIMIT 64 OFFSET %s",
            (offset,),
        ).fetchall()
        if not batch:
            break
        offset += len(batch)
        if len(found) >= wanted:
            cut = sorted(found.values(), reverse=True)[wanted - 1]
            if int(batch[0][2]) < cut:
                break
        found.update(
            rollup_sessions(run, [(blog, post) for blog, post, _ in batch], first, last)
        )
    ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:wanted]
    return Counter({key: count for key, count in ranked if count})

def rollup_sessions(
    run: Run, posts: Iterable[tuple[int, int]], first: int, last: int
) -> Counter[tuple[int, int]]:
    """The rollups' distinct sessions in ``[first, last]`` of each of ``posts``."""
    posts = list(posts)
    if not posts:
        return Counter()
    rows = run(
        "SELECT post.b, post.p, (SELECT COALESCE(SUM(d.n), 0) FROM rollup_distinct AS d"
        "  WHERE d.kind = 'session' AND d.blog_id = post.b AND d.post_id = post.p"
        "  AND d.day BETWEEN %s AND %s AND d.prev_day < %s)"
        " FROM unnest(%s::bigint[], %s::bigint[]) AS post (b, p)",
        (first, last, first, [b for b, _ in posts], [p for _, p in posts]),
    )
    return Counter({(int(blog), int(post)): int(n) for blog, post, n in rows})

def held_entities(
    run: Run, joined: Mapping[EntityKey, set[int]], first: int, last: int
) -> dict[EntityKey, set[int]]:
    """The joined entities the rollups hold on some day of ``[first, last]``, each with
    which of its joined days they hold (see `tracks.presence.raw_events.raw_figures`)."""
    keys = list(joined)
    if not keys:
        return {}
    columns = _entity_arrays(keys)
    rows = run(
        # LATERAL ... LIMIT 1: a primary-key probe per entity, never a scan of the table
        # (which a semi-join plan over the unnest's guessed size can pick).
        "SELECT j.i FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[])"
        " WITH ORDINALITY AS j (kind, b, p, entity, i) CROSS JOIN LATERAL (SELECT 1 FROM"
        " rollup_entity_days AS e WHERE e.kind = j.kind AND e.blog_id = j.b"
        " AND e.post_id = j.p AND e.entity = j.entity AND e.day BETWEEN %s AND %s"
        " LIMIT 1) AS found",
        (*columns, first, last),
    )
    held: dict[EntityKey, set[int]] = {keys[int(index) - 1]: set() for (index,) in rows}
    entity_days = [(key, day) for key in held for day in sorted(joined[key])]
    if entity_days:
        columns = _entity_arrays([key for key, _ in entity_days])
        rows = run(
            "SELECT j.i FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[],"
            " %s::integer[]) WITH ORDINALITY AS j (kind, b, p, entity, day, i)"
            " CROSS JOIN LATERAL (SELECT 1 FROM rollup_entity_days AS e"
            " WHERE e.kind = j.kind AND e.blog_id = j.b AND e.post_id = j.p"
            " AND e.entity = j.entity AND e.day = j.day LIMIT 1) AS found",
            (*columns, [day for _, day in entity_days]),
        )
        for (index,) in rows:
            key, day = entity_days[int(index) - 1]
            held[key].add(day)
    return held


def _entity_arrays(keys: list[EntityKey]) -> tuple[list[str], list[int], list[int], list[str]]:
    """The columns of ``keys`` as arrays; an entity as ``rollup_entity_days`` holds it."""
    return (
        [kind for kind, _, _, _ in keys],
        [blog for _, blog, _, _ in keys],
        [post for _, _, post, _ in keys],
        [str(entity) for _, _, _, entity in keys],
    )
