"""Presence statistics: what a scope is, what a store must answer, and the JSON it answers.

No SQL and no I/O here (see `tracks.presence.sqlite` and `tracks.presence.postgresql` for
the stores). A `StatsStore`
answers `stats()` with the figures below for a `Scope` (everything, a blog or a post, over
whole UTC days); `tracks report` and the server's ``GET /api/stats`` print the same JSON.

Figures (keys of `stats()`):
``joins``, ``unique_sessions`` (distinct ``(blog_id, post_id, session_id)`` that joined),
``unique_users`` (distinct ``wp_user_id`` that joined), ``unique_posts`` (distinct
``(blog_id, post_id)`` with a join), ``sessions_per_user`` (unique_sessions / unique_users),
``peak_concurrent_sessions`` and ``peak_concurrent_users`` (per post, the maximum over posts
and days), ``session_duration_ms`` (``p50``, ``p90`` and a ``histogram``, from leaves),
``blocked``, ``blocked_rate`` (blocked / (unique_sessions + blocked)),
``connection_errors_by_code`` (the `MAX_ERROR_CODES` most frequent codes, the rest under
``"(other)"``), ``daily`` (the figures above per UTC day, from the later of ``since`` and the
scope's first day with data, through ``until``) and ``top_posts`` (by unique sessions).

Every answer is bounded: ``daily`` by the range (a server bounds it with `Scope.bounded`),
the error codes by `MAX_ERROR_CODES` and `MAX_CODE_LENGTH`, ``top_posts`` by `TOP_POSTS`.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Protocol, Self

from tracks.event import JSONValue
from tracks.presence.figures import DAY_MS, day_from_text, day_of, day_text, histogram, percentiles
from tracks.presence.retention import parse_duration

__all__ = [
    "AGGREGATE_CHUNK",
    "FIRST_DAY",
    "LAST_DAY",
    "MAX_CODE_LENGTH",
    "MAX_ERROR_CODES",
    "OTHER_CODES",
    "TOP_POSTS",
    "DayFigures",
    "QueryCancelledError",
    "QueryTimer",
    "Scope",
    "StatsStore",
    "add_up",
    "bounded_codes",
    "parse_day",
    "stats_json",
]

TOP_POSTS = 10

MAX_ERROR_CODES = 20
"""Error codes listed per figure set; the rest are summed under `OTHER_CODES`."""
MAX_CODE_LENGTH = 64
"""Characters of an error code shown; longer codes are cut (and counted together)."""
OTHER_CODES = "(other)"

FIRST_DAY = day_from_text("0001-01-01")
"""The first day a range may name (Python's dates start here)."""
LAST_DAY = day_from_text("9999-12-31")
"""The last day a range may name."""

# Milliseconds since the epoch: more than 10 ASCII digits (fewer read as a day or duration);
# 9999-12-31 is 15 digits, so 20 is plenty and keeps int() away from huge inputs.
_EPOCH_MS = re.compile(r"\d{11,20}", re.ASCII)

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
        for name in ("since_day", "until_day"):
            day = getattr(self, name)
            if day is not None and not FIRST_DAY <= day <= LAST_DAY:
                raise ValueError(f"{name} must be within 0001-01-01..9999-12-31")

    @property
    def level_key(self) -> tuple[int, int]:
        """The rollup key of the scope: ``(b, p)``, ``(b, 0)`` or ``(0, 0)``."""
        return (self.blog_id or 0, self.post_id or 0)

    def contains(self, blog_id: int, post_id: int) -> bool:
        return (self.blog_id is None or blog_id == self.blog_id) and (
            self.post_id is None or post_id == self.post_id
        )

    def bounded(self, *, max_days: int, today: int) -> Scope:
        """This scope with a range of at most ``max_days`` days, ``since`` and ``until``
        both included (what a server answers; `tracks report` is not bounded).

        An open ``until`` is ``today``. An open ``since`` becomes the first day of the
        ``max_days`` days that end at ``until``; the figures still start at the scope's
        first day with data when that is later. A range that ends before it begins is
        empty, not refused.

        Raises:
            ValueError: ``since`` and ``until`` are more than ``max_days`` days apart.
        """
        if max_days < 1:
            raise ValueError("max_days must be >= 1")
        until = today if self.until_day is None else self.until_day
        if self.since_day is None:
            return replace(self, since_day=max(until - max_days + 1, FIRST_DAY))
        days = until - self.since_day + 1
        if days > max_days:
            raise ValueError(
                f"the range {day_text(self.since_day)}..{day_text(until)} is {days} days;"
                f" stats answer at most {max_days} days (since..until, both included)"
            )
        return self


def parse_day(text: str, *, now_ms: int, until: bool = False) -> int:
    """A day number from ``YYYY-MM-DD``, a duration (``7d``: the last 7 days, today
    included, as ``since``; 7 days ago as ``until``; see `parse_duration`) or an epoch
    time in ms.

    Raises:
        ValueError: none of these, or a day outside `FIRST_DAY`..`LAST_DAY`.
    """
    text = text.strip()
    shown = repr(text if len(text) <= 40 else f"{text[:40]}...")
    day: int | None = None
    if _EPOCH_MS.fullmatch(text):
        day = day_of(int(text) - (1 if until else 0))
    elif text.isascii():
        try:
            span = parse_duration(text)
        except ValueError:
            with suppress(ValueError):
                day = day_from_text(text)
        else:
            if until:
                day = day_of(now_ms - span)
            else:
                day = day_of(now_ms) - max(-(-span // DAY_MS), 1) + 1
    if day is None:
        raise ValueError(
            f"bad day {shown}: expected YYYY-MM-DD, a duration such as 7d, or ms since epoch"
        )
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"bad day {shown}: not within 0001-01-01..9999-12-31")
    return day


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
        errors: dict[str, JSONValue] = dict(bounded_codes(self.errors))
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


def bounded_codes(errors: Mapping[str, int]) -> list[tuple[str, int]]:
    """Error counts by code, most frequent first (ties by code): at most `MAX_ERROR_CODES`
    codes of at most `MAX_CODE_LENGTH` characters, the rest summed under `OTHER_CODES`.

    Stored codes are whatever clients sent; a store full of distinct or huge codes must
    not make every answer huge.
    """
    cut: Counter[str] = Counter()
    for code, count in errors.items():
        cut[code if len(code) <= MAX_CODE_LENGTH else code[: MAX_CODE_LENGTH - 3] + "..."] += (
            count
        )
    ranked = sorted(cut.items(), key=lambda item: (-item[1], item[0]))
    if len(ranked) <= MAX_ERROR_CODES:
        return ranked
    kept = Counter(dict(ranked[: MAX_ERROR_CODES - 1]))
    kept[OTHER_CODES] += sum(count for _, count in ranked[MAX_ERROR_CODES - 1 :])
    return sorted(kept.items(), key=lambda item: (-item[1], item[0]))


class QueryCancelledError(Exception):
    """A `StatsStore.stats` call stopped by `StatsStore.interrupt` before it finished."""


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

    SQLite (`tracks.presence.sqlite.SqliteStatsStore`) and PostgreSQL
    (`tracks.presence.postgresql.PostgresStatsStore`) implement it over the same rollup
    design and pass the same tests (tests/tracks/test_stats.py) with the same figures.
    Blocking: call it from a thread, never from an event loop. A store is used as a
    context manager, or closed with `close()`.
    """

    def stats(self, scope: Scope, *, now_ms: int) -> dict[str, JSONValue]:
        """The figures of `stats_json` for ``scope``, exact up to the last stored event.

        ``daily`` runs from the later of ``since`` and the scope's first day with data
        through ``until``; empty when the scope has no data at all.

        Args:
            scope: which events count.
            now_ms: the time of the question: ``until`` defaults to its day, and a visit
                without a leave counts as open until then (at most 24 hours).

        Raises:
            QueryCancelledError: `interrupt` was called meanwhile.
        """
        ...

    def interrupt(self) -> None:
        """Make a `stats` call running in another thread stop soon with
        `QueryCancelledError` (and every later one on this store). Thread-safe."""
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


class QueryTimer:
    """Adds the seconds each named part takes to ``timings`` (when given); before each
    part, stops a cancelled query (the Python between statements has no progress handler).
    """

    def __init__(self, timings: dict[str, float] | None, cancelled: threading.Event) -> None:
        self._timings = timings
        self._cancelled = cancelled

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._cancelled.is_set():
            raise QueryCancelledError("the stats query was cancelled")
        if self._timings is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] = self._timings.get(name, 0.0) + time.perf_counter() - started
