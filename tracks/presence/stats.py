"""Presence statistics: what a scope is, what a store must answer, and the JSON it answers.

No SQL and no I/O here (see `tracks.sqlite_stats` for the SQLite store). A `StatsStore`
answers `stats()` with the figures below for a `Scope` (everything, a blog or a post, over
whole UTC days); `tracks report` and the server's ``GET /api/stats`` print the same JSON.

Figures (keys of `stats()`):
``joins``, ``unique_sessions`` (distinct ``(blog_id, post_id, session_id)`` that joined),
``unique_users`` (distinct ``wp_user_id`` that joined), ``unique_posts`` (distinct
``(blog_id, post_id)`` with a join), ``sessions_per_user`` (unique_sessions / unique_users),
``peak_concurrent_sessions`` and ``peak_concurrent_users`` (per post, the maximum over posts
and days), ``session_duration_ms`` (``p50``, ``p90`` and a ``histogram``, from leaves),
``blocked``, ``blocked_rate`` (blocked / (unique_sessions + blocked)),
``connection_errors_by_code``, ``daily`` (the figures above per UTC day) and ``top_posts``
(by unique sessions).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from tracks.event import JSONValue
from tracks.presence.figures import (
    DAY_MS,
    bucket_value,
    day_from_text,
    day_of,
    day_text,
    histogram,
    percentile,
)

__all__ = [
    "TOP_POSTS",
    "DayFigures",
    "Scope",
    "StatsStore",
    "parse_day",
    "stats_json",
]

TOP_POSTS = 10

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS, "w": 7 * DAY_MS}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scope:
    """Which events the figures count: one blog, one post, or all; UTC days, both included.

    ``since_day`` / ``until_day`` are day numbers (days since 1970-01-01, see `parse_day`);
    None means from the first recorded day / through today.
    """

    blog_id: int | None = None
    post_id: int | None = None
    since_day: int | None = None
    until_day: int | None = None

    def __post_init__(self) -> None:
        if self.post_id is not None and self.blog_id is None:
            raise ValueError("a post_id needs its blog_id (post ids are unique per blog)")
        for name in ("blog_id", "post_id"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer")

    @property
    def level_key(self) -> tuple[int, int]:
        """The rollup key of the scope: ``(b, p)``, ``(b, 0)`` or ``(0, 0)``."""
        return (self.blog_id or 0, self.post_id or 0)

    def contains(self, blog_id: int, post_id: int) -> bool:
        return (self.blog_id is None or blog_id == self.blog_id) and (
            self.post_id is None or post_id == self.post_id
        )


def parse_day(text: str, *, now_ms: int, until: bool = False) -> int:
    """A day number from ``YYYY-MM-DD``, a duration (``7d``: the last 7 days, today
    included, as ``since``; 7 days ago as ``until``) or an epoch time in ms.

    Raises:
        ValueError: none of these.
    """
    text = text.strip()
    if text.isdigit() and len(text) > 10:
        return day_of(int(text) - (1 if until else 0))
    match = _DURATION.match(text)
    if match is not None:
        span = int(match[1]) * _UNIT_MS[match[2]]
        if until:
            return day_of(now_ms - span)
        return day_of(now_ms) - max(-(-span // DAY_MS), 1) + 1
    try:
        return day_from_text(text)
    except ValueError:
        raise ValueError(
            f"bad day {text!r}: expected YYYY-MM-DD, a duration such as 7d, or ms since epoch"
        ) from None


@dataclass(slots=True)
class DayFigures:
    """Partial figures of one day (or a whole range) before they become JSON."""

    joins: int = 0
    blocked: int = 0
    unique_sessions: int = 0
    unique_users: int = 0
    unique_posts: int = 0
    peak_sessions: int = 0
    peak_users: int = 0
    durations: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    percentile_buckets: tuple[int | None, int | None] | None = None
    """The p50 and p90 buckets when a store computed them instead of filling `durations`."""

    def json(self, *, with_histogram: bool) -> dict[str, JSONValue]:
        if self.durations or self.percentile_buckets is None:
            p50, p90 = percentile(self.durations, 50), percentile(self.durations, 90)
        else:
            p50, p90 = (None if b is None else bucket_value(b) for b in self.percentile_buckets)
        duration: dict[str, JSONValue] = {"p50": p50, "p90": p90}
        if with_histogram:
            duration["histogram"] = list(histogram(self.durations))
        attempts = self.unique_sessions + self.blocked
        errors: dict[str, JSONValue] = {
            code: count
            for code, count in sorted(self.errors.items(), key=lambda item: (-item[1], item[0]))
        }
        return {
            "joins": self.joins,
            "unique_sessions": self.unique_sessions,
            "unique_users": self.unique_users,
            "unique_posts": self.unique_posts,
            "sessions_per_user": (
                round(self.unique_sessions / self.unique_users, 3) if self.unique_users else 0.0
            ),
            "peak_concurrent_sessions": self.peak_sessions,
            "peak_concurrent_users": self.peak_users,
            "session_duration_ms": duration,
            "blocked": self.blocked,
            "blocked_rate": round(self.blocked / attempts, 4) if attempts else 0.0,
            "connection_errors_by_code": errors,
        }


def stats_json(
    total: DayFigures,
    days: dict[int, DayFigures],
    first_day: int,
    last_day: int,
    top_posts: list[tuple[int, int, int]],
) -> dict[str, JSONValue]:
    """The figures as JSON: totals, ``daily`` for every day of the range, ``top_posts``."""
    result = total.json(with_histogram=True)
    result["daily"] = [
        {"day": day_text(day), **days.get(day, DayFigures()).json(with_histogram=False)}
        for day in range(first_day, last_day + 1)
    ]
    result["top_posts"] = [
        {"blog_id": blog_id, "post_id": post_id, "unique_sessions": sessions}
        for blog_id, post_id, sessions in top_posts
    ]
    return result


class StatsStore(Protocol):
    """An event store that answers presence figures. Blocking: call it from a thread.

    SQLite implements it (`tracks.sqlite_stats.SqliteStatsStore`); a PostgreSQL store can
    implement the same three methods over the same rollup design.
    """

    def stats(self, scope: Scope, *, now_ms: int) -> dict[str, JSONValue]:
        """The figures of `stats_json` for ``scope``, exact up to the last stored event."""
        ...

    def aggregate(self, *, now_ms: int) -> int:
        """Fold events stored since the last run into the daily rollups; return how many."""
        ...

    def prune(self, *, before_ms: int) -> int:
        """Delete rolled-up raw events older than ``before_ms``; return how many."""
        ...

    def close(self) -> None: ...
