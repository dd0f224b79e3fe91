"""Presence statistics: what a scope is, what a store must answer, and the JSON it answers.

No SQL and no I/O here (see `tracks.presence.sqlite` for the SQLite store). A `StatsStore`
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

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol, Self

from tracks.event import JSONValue
from tracks.presence.figures import DAY_MS, day_from_text, day_of, day_text, histogram, percentiles
from tracks.presence.retention import parse_duration

__all__ = [
    "AGGREGATE_CHUNK",
    "TOP_POSTS",
    "DayFigures",
    "Scope",
    "StatsStore",
    "add_up",
    "parse_day",
    "stats_json",
]

TOP_POSTS = 10

AGGREGATE_CHUNK = 1_000_000
"""Events per rollup transaction unless the caller says otherwise (`StatsStore.aggregate`)."""


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
    included, as ``since``; 7 days ago as ``until``; see `parse_duration`) or an epoch
    time in ms.

    Raises:
        ValueError: none of these.
    """
    text = text.strip()
    if text.isdigit() and len(text) > 10:
        return day_of(int(text) - (1 if until else 0))
    try:
        span = parse_duration(text)
    except ValueError:
        pass
    else:
        if until:
            return day_of(now_ms - span)
        return day_of(now_ms) - max(-(-span // DAY_MS), 1) + 1
    try:
        return day_from_text(text)
    except ValueError:
        raise ValueError(
            f"bad day {text!r}: expected YYYY-MM-DD, a duration such as 7d, or ms since epoch"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class DayFigures:
    """The figures of one day, or of a whole range, before they become JSON.

    Figures of disjoint parts add up with ``+``: counts and histograms are summed, peaks
    take the larger. Distinct counts are summed too, so a store adds only entities the
    other part has not counted; a peak that must be replaced is set with
    `dataclasses.replace`.
    """

    joins: int = 0
    blocked: int = 0
    unique_sessions: int = 0
    unique_users: int = 0
    unique_posts: int = 0
    peak_sessions: int = 0
    peak_users: int = 0
    durations: Counter[int] = field(default_factory=Counter)
    """Leaves per duration bucket (`tracks.presence.figures.duration_bucket`)."""
    errors: Counter[str] = field(default_factory=Counter)
    """Connection errors per code."""

    def __add__(self, other: DayFigures) -> DayFigures:
        return add_up((self, other))

    def with_distinct(self, counts: Mapping[str, int]) -> DayFigures:
        """These figures with the distinct counts of ``counts`` by entity kind (``session``,
        ``user``, ``post``; a missing kind counts zero)."""
        return replace(
            self,
            unique_sessions=counts.get("session", 0),
            unique_users=counts.get("user", 0),
            unique_posts=counts.get("post", 0),
        )

    def json(self, *, with_histogram: bool) -> dict[str, JSONValue]:
        p50, p90 = percentiles(self.durations, (50, 90))
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


def add_up(parts: Iterable[DayFigures]) -> DayFigures:
    """The figures of disjoint parts together (see `DayFigures`); no parts: all zero."""
    joins = blocked = sessions = users = posts = peak_sessions = peak_users = 0
    durations: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    for part in parts:
        joins += part.joins
        blocked += part.blocked
        sessions += part.unique_sessions
        users += part.unique_users
        posts += part.unique_posts
        peak_sessions = max(peak_sessions, part.peak_sessions)
        peak_users = max(peak_users, part.peak_users)
        durations.update(part.durations)
        errors.update(part.errors)
    return DayFigures(
        joins=joins,
        blocked=blocked,
        unique_sessions=sessions,
        unique_users=users,
        unique_posts=posts,
        peak_sessions=peak_sessions,
        peak_users=peak_users,
        durations=durations,
        errors=errors,
    )


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
    """An event store that answers presence figures: the interface of every store.

    SQLite implements it (`tracks.presence.sqlite.SqliteStatsStore`); a PostgreSQL store
    implements the same methods over the same rollup design and passes the same tests
    (tests/tracks/test_stats.py). Blocking: call it from a thread, never from an event
    loop. A store is used as a context manager, or closed with `close()`.
    """

    def stats(self, scope: Scope, *, now_ms: int) -> dict[str, JSONValue]:
        """The figures of `stats_json` for ``scope``, exact up to the last stored event.

        Args:
            scope: which events count.
            now_ms: the time of the question: ``until`` defaults to its day, and a visit
                without a leave counts as open until then (at most 24 hours).
        """
        ...

    def aggregate(self, *, now_ms: int, chunk: int = AGGREGATE_CHUNK) -> int:
        """Fold the events stored since the last run into the daily rollups.

        Args:
            now_ms: the time of the run (visits still open are open until then).
            chunk: at most this many events per transaction, so writers wait less.

        Returns:
            How many events were rolled up.
        """
        ...

    def prune(self, *, before_ms: int) -> int:
        """Delete the raw events older than ``before_ms`` that the rollups already hold
        (figures stay the same); return how many. Callers keep at least
        `tracks.presence.retention.MIN_RETENTION_MS` of raw events."""
        ...

    def close(self) -> None:
        """Release the store's connections. Idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...
