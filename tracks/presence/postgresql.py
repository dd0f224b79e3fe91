"""`PostgresStatsStore`: presence figures from a PostgreSQL event store. Blocking psycopg.

The SQLite store's design over PostgreSQL's tables (`tracks.presence.sqlite` explains it):
the daily rollups (`tracks.presence.postgresql_rollup`) plus the raw events since the last
rollup (``id > rollup_state.last_id``), combined by `tracks.presence.raw_events`, so the
figures equal SQLite's exactly at any moment. Approximate, as on SQLite: the duration
percentiles, which come from buckets 2 % wide (`tracks.presence.figures.duration_bucket`),
so within 1 % of the exact value. Where the two stores can differ, only on odd input: an
error code sent as a JSON boolean reads ``true`` here and ``1`` on SQLite, and a
``duration_ms`` of ``true`` counts as no duration here and 1 ms on SQLite.

A query reads in one REPEATABLE READ, read-only transaction: the rollups and the raw events
since come from one snapshot, even while a rollup commits. `interrupt()` cancels the
statement running on the server (`psycopg.Connection.cancel`).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from contextlib import suppress
from typing import Any, Self

from tracks.event import JSONValue
from tracks.presence import postgresql_rollup as rollup
from tracks.presence import postgresql_schema as schema
from tracks.presence.figures import DAY_MS, day_of
from tracks.presence.postgresql_peaks import day_peaks, fresh_touches
from tracks.presence.postgresql_rollup_reads import (
    held_entities,
    rollup_figures,
    rollup_sessions,
    rollup_top_posts,
)
from tracks.presence.raw_events import (
    RawEvent,
    joined_entities,
    range_json,
    raw_figures,
)
from tracks.presence.stats import (
    AGGREGATE_CHUNK,
    FIRST_DAY,
    LAST_DAY,
    TOP_POSTS,
    DayFigures,
    QueryCancelledError,
    QueryTimer,
    Scope,
)

__all__ = ["PostgresStatsStore"]



class PostgresStatsStore:
    """The `StatsStore` of a PostgreSQL event store.

    Args:
        url: ``postgresql://user@host:port/db[?schema=NAME]``. The store is migrated to the
            current schema (rollup tables included) when opened.

    Raises:
        ImportError: psycopg is not installed.
        SchemaError: the store is newer than this code.
    """

    def __init__(self, url: str) -> None:
        self.target = schema.parse_url(url)
        psycopg = schema.import_psycopg()
        self._psycopg = psycopg
        self._connection = psycopg.connect(
            self.target.conninfo,
            autocommit=True,
            connect_timeout=10,
            application_name="tracks-stats",
        )
        try:
            try:
                current = schema.schema_version(self._connection, self.target.schema)
            except schema.SchemaError:
                current = 0  # no store yet (or a newer one: migrate says which)
            if current < schema.SCHEMA_VERSION:
                schema.migrate(self._connection, self.target.schema)
        except BaseException:
            self._connection.close()
            raise
        self._cancelled = threading.Event()
        self._closed = False
        self._timer = QueryTimer(None, self._cancelled)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._connection.close()

    def interrupt(self) -> None:
        """Stop a `stats()` call running in another thread, and every later one."""
        self._cancelled.set()
        if not self._closed:
            # Nothing running, or the server gone: the flag still stops the next statement.
            with suppress(self._psycopg.Error):
                self._connection.cancel_safe(timeout=5.0)

    # --- writing ---------------------------------------------------------------------

    def aggregate(self, *, now_ms: int, chunk: int = AGGREGATE_CHUNK) -> int:
        """Roll up new events, ``chunk`` ids per transaction; 0 when another node is rolling
        up this schema right now (it skips rather than waits)."""
        done = rollup.aggregate(self._connection, self.target.schema, now_ms=now_ms, chunk=chunk)
        return 0 if done is None else done.events

    def prune(self, *, before_ms: int) -> int:
        """Delete raw events older than ``before_ms`` that the rollups already hold: whole
        monthly partitions where they can go, rows in the partial month. Under the rollup
        lock: 0 when another node is rolling up or pruning right now."""
        with rollup.try_rollup_lock(self._connection, self.target.schema) as taken:
            return rollup.prune(self._connection, before_ms=before_ms) if taken else 0

    def rolled_up_to(self) -> int:
        """The last event ``id`` the rollups hold (0: none)."""
        return rollup.rollup_state(self._connection)[0]

    # --- reading ---------------------------------------------------------------------

    def stats(
        self, scope: Scope, *, now_ms: int, timings: dict[str, float] | None = None
    ) -> dict[str, JSONValue]:
        """The figures; with ``timings``, also the seconds each part took (benchmarks).

        Raises:
            QueryCancelledError: `interrupt()` was called.
        """
        if self._cancelled.is_set():
            raise QueryCancelledError("the stats query was cancelled")
        try:
            with self._connection.transaction():
                # No JIT: compiling costs 15-20 ms a statement, more than any of these
                # index reads runs (the planner's costs over unnest() arrays invite it).
                self._connection.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;"
                    " SET LOCAL jit = off"
                )
                self._timer = QueryTimer(timings, self._cancelled)
                return self._stats(scope, now_ms)
        except self._psycopg.errors.QueryCanceled:
            raise QueryCancelledError("the stats query was cancelled") from None
        except self._psycopg.Error:
            if self._cancelled.is_set():
                raise QueryCancelledError("the stats query was cancelled") from None
            raise

    def _run(self, query: str, params: Iterable[object] = (), *, binary: bool = False) -> Any:
        if self._cancelled.is_set():
            raise QueryCancelledError("the stats query was cancelled")
        return self._connection.execute(query, tuple(params), binary=binary)

    def _stats(self, scope: Scope, now_ms: int) -> dict[str, JSONValue]:
        last_id, rolled_at = rollup.rollup_state(self._connection)
        rolled_up = last_id > 0
        with self._timer("raw"):
            raw = self._raw_events(scope, last_id)
            first_data = self._first_day(scope, last_id)
        last = min(day_of(now_ms) if scope.until_day is None else scope.until_day, LAST_DAY)
        first = last + 1 if first_data is None else first_data  # no data: no days
        raw = [event for event in raw if first <= day_of(event.ts) <= last]
        rolled_days: dict[int, DayFigures] = {}
        rolled_total = DayFigures()
        top: Counter[tuple[int, int]] = Counter()
        if rolled_up:
            with self._timer("rollups"):
                rolled_days, rolled_total = rollup_figures(self._run, scope, first, last)
            with self._timer("top_posts"):
                top = rollup_top_posts(self._run, scope, first, last, limit=TOP_POSTS)
        with self._timer("held"):
            joined = joined_entities(raw, scope.level_key)
            held = held_entities(self._run, joined, first, last) if rolled_up else {}
            raw_days, raw_total, new_sessions = raw_figures(raw, joined, held)
            if rolled_up:
                unlisted = _may_rank(top, new_sessions, limit=TOP_POSTS)
                top.update(rollup_sessions(self._run, unlisted, first, last))
            top.update(new_sessions)
        with self._timer("peaks"):
            touched = fresh_touches(raw, first, last, now_ms=now_ms)
            peaks = day_peaks(
                self._connection, scope, touched, first, last, rolled_at=rolled_at, now_ms=now_ms
            )
        return range_json(
            rolled=(rolled_days, rolled_total), raw=(raw_days, raw_total), peaks=peaks,
            sessions_by_post=top, first=first, last=last,
        )

    def _raw_clauses(self, scope: Scope, last_id: int) -> tuple[list[str], list[int]]:
        clauses = ["id > %s", "blog_id IS NOT NULL", "post_id IS NOT NULL"]
        params = [last_id]
        if scope.blog_id is not None:
            clauses.append("blog_id = %s")
            params.append(scope.blog_id)
        if scope.post_id is not None:
            clauses.append("post_id = %s")
            params.append(scope.post_id)
        return clauses, params

    def _first_day(self, scope: Scope, last_id: int) -> int | None:
        """The later of ``since`` and the scope's first day with data, rolled up or raw."""
        since = FIRST_DAY if scope.since_day is None else scope.since_day
        candidates: list[int] = []
        for table in ("rollup_counts", "rollup_errors", "rollup_durations"):
            row = self._run(
                f"SELECT MIN(day) FROM {table} WHERE blog_id = %s AND post_id = %s",
                scope.level_key,
            ).fetchone()
            if row[0] is not None:
                candidates.append(int(row[0]))
        if not candidates or min(candidates) > since:
            clauses, params = self._raw_clauses(scope, last_id)
            row = self._run(
                f"SELECT MIN(ts) FROM events WHERE {' AND '.join(clauses)}"
                f" AND ({rollup.KIND_SQL}) IS NOT NULL",
                params,
            ).fetchone()
            if row[0] is not None:
                candidates.append(day_of(int(row[0])))
        return None if not candidates else max(min(candidates), since)

    def _raw_events(self, scope: Scope, last_id: int) -> list[RawEvent]:
        clauses, params = self._raw_clauses(scope, last_id)
        if scope.since_day is not None:
            clauses.append("ts >= %s")
            params.append(scope.since_day * DAY_MS)
        if scope.until_day is not None:
            clauses.append("ts < %s")
            params.append((scope.until_day + 1) * DAY_MS)
        rows = self._run(
            "SELECT kind, blog_id, post_id, session, wp_user_id, ts,"
            " CASE WHEN kind = 'leave' THEN duration END,"
            " CASE WHEN kind = 'error' THEN code END FROM ("
            f" SELECT {rollup.KIND_SQL} AS kind, blog_id, post_id,"
            f" {rollup.SESSION_SQL} AS session, wp_user_id, ts,"
            f" {rollup.DURATION_SQL} AS duration, {rollup.ERROR_CODE_SQL} AS code"
            f" FROM events WHERE {' AND '.join(clauses)}) AS e WHERE kind IS NOT NULL",
            params,
        ).fetchall()
        return [
            RawEvent(str(kind), int(blog), int(post), session, user, int(ts), duration, code)
            for kind, blog, post, session, user, ts, duration, code in rows
        ]


def _may_rank(
    top: Counter[tuple[int, int]], new_sessions: Counter[tuple[int, int]], *, limit: int
) -> set[tuple[int, int]]:
    """The posts with new sessions that `rollup_top_posts` did not list (``top``) and that
    could still enter the ``limit`` best: only their rollup counts are worth reading.

    An unlisted post has at most the lowest listed count when the listing is full
    (``4 * limit`` posts), else none; the ``limit``-th listed count only grows. A post whose
    ceiling plus its new sessions stays below it cannot rank (ties rank by id, so below).
    """
    unlisted = new_sessions.keys() - top.keys()
    if len(top) < limit:
        return set(unlisted)
    ceiling = min(top.values()) if len(top) >= 4 * limit else 0
    cut = sorted(top.values(), reverse=True)[limit - 1]
    return {post for post in unlisted if ceiling + new_sessions[post] >= cut}
