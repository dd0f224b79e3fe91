"""What the events stored since the last rollup add to the rollups' figures. Pure.

No SQL and no I/O here: a store reads its raw events (`RawEvent`) and asks its rollups
which of the entities those joined (`joined_entities`) they already hold, and on which days; these
functions turn the answers into `DayFigures` (`raw_figures`) and add them to the rollups'
(`merge_days`). Every store over the rollup design (SQLite, PostgreSQL) combines them this way,
so its figures are exact at any moment, not only right after a rollup.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import NamedTuple

from tracks.event import JSONValue
from tracks.presence.figures import MAX_OPEN_MS, day_of, duration_bucket
from tracks.presence.stats import TOP_POSTS, DayFigures, add_up, stats_json

__all__ = [
    "EntityKey",
    "RawEvent",
    "joined_entities",
    "merge_days",
    "range_json",
    "raw_figures",
    "rollup_days",
    "rollup_total",
    "touched_post_days",
]


class RawEvent(NamedTuple):
    """A presence event stored since the last rollup, as the figures need it."""

    kind: str
    """``join``, ``leave``, ``blocked`` or ``error`` (`tracks.presence.rollup.kind_sql`)."""
    blog_id: int
    post_id: int
    session_id: object
    wp_user_id: int | None
    ts: int
    duration_ms: object
    """A leave's ``duration_ms`` property (any JSON value; only numbers count)."""
    error_code: str | None
    """An error's code (`tracks.presence.rollup.ERROR_CODE_SQL`)."""


EntityKey = tuple[str, int, int, object]
"""An entity's rollup key: (kind, blog_id, post_id, entity), as in ``rollup_entity_days``."""



def joined_entities(
    raw: Iterable[RawEvent], level_key: tuple[int, int]
) -> dict[EntityKey, set[int]]:
    """The days each entity joined on, by its rollup key: a session and a post per post, a
    user at the scope's level."""
    level_blog, level_post = level_key
    joined: defaultdict[EntityKey, set[int]] = defaultdict(set)
    for event in raw:
        if event.kind != "join":
            continue
        day = day_of(event.ts)
        if event.session_id is not None:
            joined[("session", event.blog_id, event.post_id, event.session_id)].add(day)
        joined[("post", event.blog_id, event.post_id, 0)].add(day)
        if event.wp_user_id is not None:
            joined[("user", level_blog, level_post, event.wp_user_id)].add(day)
    return dict(joined)


def touched_post_days(
    raw: Iterable[RawEvent], first: int, last: int, *, now_ms: int
) -> set[tuple[int, int, int]]:
    """The (blog, post, day) within ``[first, last]`` whose peaks the joins and leaves of
    ``raw`` can change: the days their visits span (a join is open at most `MAX_OPEN_MS`)."""
    touched: set[tuple[int, int, int]] = set()
    for event in raw:
        if event.kind == "join":
            start, end = event.ts, min(event.ts + MAX_OPEN_MS, now_ms)
        elif event.kind == "leave":
            duration = event.duration_ms
            start = event.ts - int(duration) if isinstance(duration, int | float) else event.ts
            end = event.ts
        else:
            continue
        for day in range(max(day_of(start), first), min(day_of(end), last) + 1):
            touched.add((event.blog_id, event.post_id, day))
    return touched


def raw_figures(
    raw: Iterable[RawEvent],
    joined: Mapping[EntityKey, set[int]],
    held: Mapping[EntityKey, set[int]],
) -> tuple[dict[int, DayFigures], DayFigures, Counter[tuple[int, int]]]:
    """What the raw events add: figures per day and for the range, and the sessions each
    post gains.

    Args:
        raw: the events stored since the last rollup, within the range.
        joined: `joined_entities` of ``raw``.
        held: the joined entities the rollups hold on some day of the range, each with
            which of its ``joined`` days they hold. An entity counts in the range unless
            held, and on each of its days that is not held.
    """
    joins: Counter[int] = Counter()
    blocked: Counter[int] = Counter()
    errors: defaultdict[int, Counter[str]] = defaultdict(Counter)
    durations: defaultdict[int, Counter[int]] = defaultdict(Counter)
    for event in raw:
        day = day_of(event.ts)
        if event.kind == "join":
            joins[day] += 1
        elif event.kind == "blocked":
            blocked[day] += 1
        elif event.kind == "error":
            errors[day][str(event.error_code)] += 1
        elif event.kind == "leave" and isinstance(event.duration_ms, int | float):
            durations[day][duration_bucket(int(event.duration_ms))] += 1
    distinct: defaultdict[int, Counter[str]] = defaultdict(Counter)
    range_distinct: Counter[str] = Counter()
    new_sessions: Counter[tuple[int, int]] = Counter()
    for key, entity_days in joined.items():
        kind, blog, post, _ = key
        held_days = held.get(key)
        for day in entity_days if held_days is None else entity_days - held_days:
            distinct[day][kind] += 1
        if held_days is None:
            range_distinct[kind] += 1
            if kind == "session":
                new_sessions[(blog, post)] += 1
    days = {
        day: DayFigures(
            joins=joins[day],
            blocked=blocked[day],
            unique_sessions=distinct[day]["session"],
            unique_users=distinct[day]["user"],
            unique_posts=distinct[day]["post"],
            durations=durations[day],
            errors=errors[day],
        )
        for day in joins.keys() | blocked.keys() | errors.keys() | durations.keys()
    }
    total = add_up(days.values()).with_distinct(range_distinct)
    return days, total, new_sessions


def merge_days(
    rolled_up: Mapping[int, DayFigures],
    raw: Mapping[int, DayFigures],
    peaks: Mapping[int, tuple[int, int]],
) -> dict[int, DayFigures]:
    """Each day's figures: the rollups' plus the raw events', with the recomputed peaks in
    place of the stored ones (a late leave can end a visit that the last run saw open)."""
    days = {**rolled_up, **raw}
    for day in rolled_up.keys() & raw.keys():
        days[day] = rolled_up[day] + raw[day]
    for day, (sessions, users) in peaks.items():
        days[day] = replace(
            days.get(day, DayFigures()), peak_sessions=sessions, peak_users=users
        )
    return days


def rollup_days(
    *,
    counts: Mapping[int, tuple[int, int]],
    peaks: Mapping[int, tuple[int, int]],
    distinct: Mapping[int, Mapping[str, int]],
    durations: Mapping[int, Counter[int]],
    errors: Mapping[int, Counter[str]],
) -> dict[int, DayFigures]:
    """Each rolled-up day's figures from the rollup tables' rows, the same for every store.

    Args:
        counts: (joins, blocked) by day.
        peaks: (peak sessions, peak users) by day.
        distinct: distinct sessions, users and posts by day and kind (a missing one: 0).
        durations: the duration histogram by day.
        errors: connection errors by day and code.
    """
    return {
        day: DayFigures(
            joins=counts.get(day, (0, 0))[0],
            blocked=counts.get(day, (0, 0))[1],
            peak_sessions=peaks.get(day, (0, 0))[0],
            peak_users=peaks.get(day, (0, 0))[1],
            unique_sessions=distinct.get(day, {}).get("session", 0),
            unique_users=distinct.get(day, {}).get("user", 0),
            unique_posts=distinct.get(day, {}).get("post", 0),
            durations=durations.get(day, Counter()),
            errors=errors.get(day, Counter()),
        )
        for day in counts.keys() | errors.keys() | durations.keys() | peaks.keys()
    }


def rollup_total(
    *,
    counts: Mapping[int, tuple[int, int]],
    distinct: Mapping[str, int],
    durations: Counter[int],
    errors: Counter[str],
) -> DayFigures:
    """The rolled-up range's figures: summed counts, the range's own distinct counts (an
    entity counted once however many days it came back) and histograms."""
    return DayFigures(
        joins=sum(joins for joins, _ in counts.values()),
        blocked=sum(blocked for _, blocked in counts.values()),
        durations=durations,
        errors=errors,
    ).with_distinct(distinct)


def range_json(
    *,
    rolled: tuple[dict[int, DayFigures], DayFigures],
    raw: tuple[dict[int, DayFigures], DayFigures],
    peaks: Mapping[int, tuple[int, int]],
    sessions_by_post: Mapping[tuple[int, int], int],
    first: int,
    last: int,
) -> dict[str, JSONValue]:
    """A range's `stats_json` from its rolled-up and raw figures: the same for every store.

    Args:
        rolled: the rollups' figures by day, and of the whole range.
        raw: the figures of the events since the last rollup, by day and in all.
        peaks: (peak sessions, peak users) of the days raw events touched, recomputed.
        sessions_by_post: unique sessions per (blog_id, post_id), for the top posts.
        first: the range's first day.
        last: its last day.
    """
    days = merge_days(rolled[0], raw[0], peaks)
    total = replace(
        rolled[1] + raw[1],
        peak_sessions=max((figures.peak_sessions for figures in days.values()), default=0),
        peak_users=max((figures.peak_users for figures in days.values()), default=0),
    )
    ranked = sorted(sessions_by_post.items(), key=lambda item: (-item[1], item[0]))
    posts = [(blog, post, n) for (blog, post), n in ranked[:TOP_POSTS] if n]
    return stats_json(total, days, first, last, posts)
