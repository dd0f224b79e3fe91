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
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
from typing import Any, Self

from tracks.event import JSONValue
from tracks.presence import postgresql_rollup as rollup
from tracks.presence import postgresql_schema as schema
from tracks.presence.figures import DAY_MS, day_of
from tracks.presence.postgresql_peaks import day_peaks
from tracks.presence.raw_events import (
    EntityKey,
    RawEvent,
    joined_entities,
    merge_days,
    raw_figures,
    touched_post_days,
)
from tracks.presence.stats import (
    AGGREGATE_CHUNK,
    FIRST_DAY,
    LAST_DAY,
    TOP_POSTS,
    DayFigures,
    QueryCancelledError,
    Scope,
    stats_json,
)

__all__ = ["PostgresStatsStore"]

_WHERE = "blog_id = %s AND post_id = %s AND day BETWEEN %s AND %s"
_DISTINCT_KINDS = "kind IN ('session', 'user', 'post')"


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
        """The figures (``timings`` is accepted for the benchmarks and left empty).

        Raises:
            QueryCancelledError: `interrupt()` was called.
        """
        if self._cancelled.is_set():
            raise QueryCancelledError("the stats query was cancelled")
        try:
            with self._connection.transaction():
                self._connection.execute(
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"
                )
                return self._stats(scope, now_ms)
        except self._psycopg.errors.QueryCanceled:
            raise QueryCancelledError("the stats query was cancelled") from None
        except self._psycopg.Error:
            if self._cancelled.is_set():
                raise QueryCancelledError("the stats query was cancelled") from None
            raise

    def _run(self, query: str, params: Iterable[object] = ()) -> Any:
        if self._cancelled.is_set():
            raise QueryCancelledError("the stats query was cancelled")
        return self._connection.execute(query, tuple(params))

    def _stats(self, scope: Scope, now_ms: int) -> dict[str, JSONValue]:
        last_id, rolled_at = rollup.rollup_state(self._connection)
        rolled_up = last_id > 0
        raw = self._raw_events(scope, last_id)
        first_data = self._first_day(scope, last_id)
        last = min(day_of(now_ms) if scope.until_day is None else scope.until_day, LAST_DAY)
        first = last + 1 if first_data is None else first_data  # no data: no days
        raw = [event for event in raw if first <= day_of(event.ts) <= last]
        rolled_days: dict[int, DayFigures] = {}
        rolled_total = DayFigures()
        top: Counter[tuple[int, int]] = Counter()
        if rolled_up:
            rolled_days, rolled_total = self._rollup_figures(scope, first, last)
            top = self._rollup_top_posts(scope, first, last, limit=TOP_POSTS)
        joined = joined_entities(raw, scope.level_key)
        held = self._held(joined, first, last) if rolled_up else {}
        raw_days, raw_total, new_sessions = raw_figures(raw, joined, held)
        if rolled_up:
            top.update(self._rollup_sessions(new_sessions.keys() - top.keys(), first, last))
        top.update(new_sessions)
        touched = touched_post_days(raw, first, last, now_ms=now_ms)
        peaks = day_peaks(
            self._connection, scope, touched, first, last, rolled_at=rolled_at, now_ms=now_ms
        )
        days = merge_days(rolled_days, raw_days, peaks)
        total = replace(
            rolled_total + raw_total,
            peak_sessions=max((figures.peak_sessions for figures in days.values()), default=0),
            peak_users=max((figures.peak_users for figures in days.values()), default=0),
        )
        ranked = sorted(top.items(), key=lambda item: (-item[1], item[0]))[:TOP_POSTS]
        posts = [(blog, post, sessions) for (blog, post), sessions in ranked if sessions]
        return stats_json(total, days, first, last, posts)

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

    def _rollup_figures(
        self, scope: Scope, first: int, last: int
    ) -> tuple[dict[int, DayFigures], DayFigures]:
        """The rollups' figures of each day in ``[first, last]`` and of the whole range."""
        key = (*scope.level_key, first, last)
        counts = {
            int(day): (int(joins), int(blocked))
            for day, joins, blocked in self._run(
                f"SELECT day, joins, blocked FROM rollup_counts WHERE {_WHERE}", key
            )
        }
        errors: defaultdict[int, Counter[str]] = defaultdict(Counter)
        range_errors: Counter[str] = Counter()
        for day, code, n in self._run(
            f"SELECT day, code, n FROM rollup_errors WHERE {_WHERE}", key
        ):
            errors[day][code] = int(n)
            range_errors[code] += int(n)
        durations: defaultdict[int, Counter[int]] = defaultdict(Counter)
        range_durations: Counter[int] = Counter()
        for day, bucket, n in self._run(
            f"SELECT day, bucket, n FROM rollup_durations WHERE {_WHERE}", key
        ):
            durations[day][bucket] = int(n)
            range_durations[bucket] += int(n)
        peaks = {
            int(day): (int(sessions), int(users))
            for day, sessions, users in self._run(
                f"SELECT day, sessions, users FROM rollup_peaks WHERE {_WHERE}", key
            )
        }
        distinct: defaultdict[int, Counter[str]] = defaultdict(Counter)
        for kind, day, n in self._run(
            f"SELECT kind, day, SUM(n) FROM rollup_distinct WHERE {_DISTINCT_KINDS}"
            f" AND {_WHERE} GROUP BY kind, day",
            key,
        ):
            distinct[day][kind] = int(n)
        range_distinct = {
            kind: int(n)
            for kind, n in self._run(
                f"SELECT kind, SUM(n) FROM rollup_distinct WHERE {_DISTINCT_KINDS}"
                f" AND {_WHERE} AND prev_day < %s GROUP BY kind",
                (*key, first),
            )
        }
        days = {
            day: DayFigures(
                joins=counts.get(day, (0, 0))[0],
                blocked=counts.get(day, (0, 0))[1],
                peak_sessions=peaks.get(day, (0, 0))[0],
                peak_users=peaks.get(day, (0, 0))[1],
                unique_sessions=distinct[day]["session"],
                unique_users=distinct[day]["user"],
                unique_posts=distinct[day]["post"],
                durations=durations[day],
                errors=errors[day],
            )
            for day in counts.keys() | errors.keys() | durations.keys() | peaks.keys()
        }
        total = DayFigures(
            joins=sum(joins for joins, _ in counts.values()),
            blocked=sum(blocked for _, blocked in counts.values()),
            durations=range_durations,
            errors=range_errors,
        )
        return days, total.with_distinct(range_distinct)

    def _rollup_top_posts(
        self, scope: Scope, first: int, last: int, *, limit: int
    ) -> Counter[tuple[int, int]]:
        """Exact rollup session counts of enough posts that raw additions cannot lift an
        unlisted post above the cut (``4 * limit`` of the best, ties by id)."""
        wanted = limit * 4
        if scope.blog_id is not None:
            clauses, params = ["blog_id = %s", "post_id != 0"], [scope.blog_id]
            if scope.post_id is not None:
                clauses.append("post_id = %s")
                params.append(scope.post_id)
            rows = self._run(
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
            batch = self._run(
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
                self._rollup_sessions([(blog, post) for blog, post, _ in batch], first, last)
            )
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:wanted]
        return Counter({key: count for key, count in ranked if count})

    def _rollup_sessions(
        self, posts: Iterable[tuple[int, int]], first: int, last: int
    ) -> Counter[tuple[int, int]]:
        """The rollups' distinct sessions in ``[first, last]`` of each of ``posts``."""
        posts = list(posts)
        if not posts:
            return Counter()
        rows = self._run(
            "SELECT post.b, post.p, (SELECT COALESCE(SUM(d.n), 0) FROM rollup_distinct AS d"
            "  WHERE d.kind = 'session' AND d.blog_id = post.b AND d.post_id = post.p"
            "  AND d.day BETWEEN %s AND %s AND d.prev_day < %s)"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS post (b, p)",
            (first, last, first, [b for b, _ in posts], [p for _, p in posts]),
        )
        return Counter({(int(blog), int(post)): int(n) for blog, post, n in rows})

    def _held(
        self, joined: Mapping[EntityKey, set[int]], first: int, last: int
    ) -> dict[EntityKey, set[int]]:
        """The joined entities the rollups hold on some day of ``[first, last]``, each with
        which of its joined days they hold (see `tracks.presence.raw_events.raw_figures`)."""
        keys = list(joined)
        if not keys:
            return {}
        columns = _entity_arrays(keys)
        rows = self._run(
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
            rows = self._run(
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
