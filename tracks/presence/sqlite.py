"""`SqliteStatsStore`: presence figures from a SQLite event store. Blocking `sqlite3`.

Figures combine the daily rollups (`tracks.presence.rollup`) with the raw events since the
last rollup (row id above ``rollup_state.last_id``), so they are exact at any moment:
sums add up, distinct counts add only the entities the rollups have not seen in the range
(`tracks.presence.raw_events`), and the peaks of the posts touched since (or with sessions
open at the last run) are recomputed from raw events (`tracks.presence.sqlite_peaks`).
Queries read through a read-only connection (``mode=ro``); `aggregate()` and `prune()`
open a writable one of their own. `interrupt()` stops a query from another thread: SQLite
checks it every few thousand virtual-machine steps, the Python between statements at each
step of the query.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Self

from tracks.event import JSONValue
from tracks.presence import sqlite_schema as schema
from tracks.presence.figures import DAY_MS, day_of
from tracks.presence.raw_events import (
    EntityKey,
    RawEvent,
    joined_entities,
    range_json,
    raw_figures,
    rollup_days,
    rollup_total,
    touched_post_days,
)
from tracks.presence.rollup import aggregate, prune, rollup_state
from tracks.presence.sqlite_peaks import day_peaks
from tracks.presence.sqlite_schema import ERROR_CODE_SQL, kind_sql
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

__all__ = ["SqliteStatsStore"]

# SQLite virtual-machine instructions between two looks at the cancel flag: a few
# microseconds of work each, so a cancelled query stops within a millisecond or so.
_PROGRESS_STEPS = 4096


class SqliteStatsStore:
    """The `StatsStore` of a SQLite event file.

    Args:
        path: the ``events.sqlite`` file (it must exist).
        connection: an open connection to use instead (an in-memory copy of a JSONL store);
            then `aggregate()` and `prune()` write through it. The store closes it.
    """

    def __init__(self, path: str | Path, *, connection: sqlite3.Connection | None = None):
        self.path = Path(path)
        self._given = connection is not None
        self._reader = connection or schema.connect_for_reading(self.path)
        self._cancelled = threading.Event()
        # A nonzero return makes SQLite abandon the statement ("interrupted").
        self._reader.set_progress_handler(self._cancelled.is_set, _PROGRESS_STEPS)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def interrupt(self) -> None:
        """Stop a `stats()` call running in another thread, and every later one."""
        self._cancelled.set()
        # The statement running now stops without waiting for the next step; a closed
        # store has none.
        with suppress(sqlite3.ProgrammingError):
            self._reader.interrupt()

    # --- writing ---------------------------------------------------------------------

    def _writer(self) -> tuple[sqlite3.Connection, bool]:
        if self._given:
            return self._reader, False
        connection = schema.connect(self.path)
        connection.execute(f"PRAGMA cache_size=-{schema.ROLLUP_CACHE_KIB}")
        return connection, True

    def aggregate(self, *, now_ms: int, chunk: int = AGGREGATE_CHUNK) -> int:
        """Roll up new events, ``chunk`` rows at a time; the recorder waits only while the
        results are written, not while they are read and computed (`rollup.aggregate`)."""
        writer, owned = self._writer()
        try:
            return aggregate(writer, now_ms=now_ms, chunk=chunk).events
        finally:
            if owned:
                writer.close()

    def prune(self, *, before_ms: int) -> int:
        """Delete raw events older than ``before_ms`` that the rollups already hold.

        Events newer than the last rollup are kept whatever their age, so run `aggregate()`
        first (the CLI and the server do).
        """
        writer, owned = self._writer()
        try:
            return prune(writer, before_ms=before_ms)
        finally:
            if owned:
                writer.close()

    # --- reading ---------------------------------------------------------------------

    def stats(
        self, scope: Scope, *, now_ms: int, timings: dict[str, float] | None = None
    ) -> dict[str, JSONValue]:
        """The figures; with ``timings``, also the seconds each part took (benchmarks).

        Raises:
            QueryCancelledError: `interrupt()` was called.
        """
        try:
            return self._stats(scope, now_ms, QueryTimer(timings, self._cancelled))
        except sqlite3.OperationalError:
            if self._cancelled.is_set():
                raise QueryCancelledError("the stats query was cancelled") from None
            raise

    def _stats(self, scope: Scope, now_ms: int, timer: QueryTimer) -> dict[str, JSONValue]:
        last_id, rolled_at = rollup_state(self._reader)
        rolled_up = last_id > 0
        with timer("raw"):
            raw = self._raw_events(scope, last_id)
            # Never a run of empty days from 1970 (or from since) before anything happened.
            first_data = self._first_day(scope, last_id)
        last = min(day_of(now_ms) if scope.until_day is None else scope.until_day, LAST_DAY)
        first = last + 1 if first_data is None else first_data  # no data: no days
        raw = [event for event in raw if first <= day_of(event.ts) <= last]
        rolled_days: dict[int, DayFigures] = {}
        rolled_total = DayFigures()
        top: Counter[tuple[int, int]] = Counter()
        if rolled_up:
            rolled_days, rolled_total = self._rollup_figures(scope, first, last, timer)
            with timer("top_posts"):
                top = self._rollup_top_posts(scope, first, last, limit=TOP_POSTS)
        with timer("raw"):
            joined = joined_entities(raw, scope.level_key)
            held = self._held(joined, first, last) if rolled_up else {}
            raw_days, raw_total, new_sessions = raw_figures(raw, joined, held)
            if rolled_up:
                top.update(self._rollup_sessions(new_sessions.keys() - top.keys(), first, last))
            top.update(new_sessions)
        with timer("peaks"):
            touched = touched_post_days(raw, first, last, now_ms=now_ms)
            peaks = day_peaks(
                self._reader, scope, touched, first, last, rolled_at=rolled_at, now_ms=now_ms
            )
        return range_json(
            rolled=(rolled_days, rolled_total), raw=(raw_days, raw_total), peaks=peaks,
            sessions_by_post=top, first=first, last=last,
        )

    def _first_day(self, scope: Scope, last_id: int) -> int | None:
        """The later of ``since`` and the scope's first day with data, rolled up or raw
        (None: no data at all). A day with only errors or leaves is a day with data."""
        since = FIRST_DAY if scope.since_day is None else scope.since_day
        candidates: list[int] = []
        for table in ("rollup_counts", "rollup_errors", "rollup_durations"):
            try:  # one primary-key seek each
                row = self._reader.execute(
                    f"SELECT MIN(day) FROM {table} WHERE blog_id = ? AND post_id = ?",
                    scope.level_key,
                ).fetchone()
            except sqlite3.OperationalError:
                if self._cancelled.is_set():
                    raise
                break  # not rolled up yet
            if row[0] is not None:
                candidates.append(int(row[0]))
        if not candidates or min(candidates) > since:
            # Raw events can be older than the rollups' first day (late arrivals).
            clauses, params = _raw_clauses(scope, last_id)
            row = self._reader.execute(
                f"SELECT MIN(ts) FROM (SELECT ts, {kind_sql()} AS kind FROM events"
                f" WHERE {' AND '.join(clauses)}) WHERE kind IS NOT NULL",
                params,
            ).fetchone()
            if row[0] is not None:
                candidates.append(day_of(int(row[0])))
        return None if not candidates else max(min(candidates), since)

    def _raw_events(self, scope: Scope, last_id: int) -> list[RawEvent]:
        """The presence events of ``scope`` stored since the last rollup."""
        clauses, params = _raw_clauses(scope, last_id)
        if scope.since_day is not None:
            clauses.append("+ts >= ?")
            params.append(scope.since_day * DAY_MS)
        if scope.until_day is not None:
            clauses.append("+ts < ?")
            params.append((scope.until_day + 1) * DAY_MS)
        rows = self._reader.execute(
            f"SELECT kind, blog_id, post_id, session_id, wp_user_id, ts,"
            " CASE WHEN kind = 'leave' THEN json_extract(props, '$.duration_ms') END,"
            f" CASE WHEN kind = 'error' THEN {ERROR_CODE_SQL} END"
            f" FROM (SELECT *, {kind_sql()} AS kind FROM events WHERE {' AND '.join(clauses)})"
            " WHERE kind IS NOT NULL",
            params,
        ).fetchall()
        return [
            RawEvent(str(kind), int(blog), int(post), session, user, int(ts), duration, code)
            for kind, blog, post, session, user, ts, duration, code in rows
        ]

    def _rollup_figures(
        self, scope: Scope, first: int, last: int, timer: QueryTimer
    ) -> tuple[dict[int, DayFigures], DayFigures]:
        """The rollups' figures of each day in ``[first, last]`` and of the whole range."""
        run = self._reader.execute
        key = (*scope.level_key, first, last)
        where = "blog_id = ? AND post_id = ? AND day BETWEEN ? AND ?"
        with timer("joins_blocked"):
            counts = {
                int(day): (int(joins), int(blocked))
                for day, joins, blocked in run(
                    f"SELECT day, joins, blocked FROM rollup_counts WHERE {where}", key
                )
            }
        with timer("errors"):
            errors: defaultdict[int, Counter[str]] = defaultdict(Counter)
            range_errors: Counter[str] = Counter()
            for day, code, n in run(f"SELECT day, code, n FROM rollup_errors WHERE {where}", key):
                errors[day][code] = n
                range_errors[code] += n
        with timer("durations"):
            durations: defaultdict[int, Counter[int]] = defaultdict(Counter)
            range_durations: Counter[int] = Counter()
            for day, bucket, n in run(
                f"SELECT day, bucket, n FROM rollup_durations WHERE {where}", key
            ):
                durations[day][bucket] = n
                range_durations[bucket] += n
        with timer("peaks"):
            peaks = {
                int(day): (int(sessions), int(users))
                for day, sessions, users in run(
                    f"SELECT day, sessions, users FROM rollup_peaks WHERE {where}", key
                )
            }
        with timer("distinct_daily"):
            distinct: defaultdict[int, Counter[str]] = defaultdict(Counter)
            for kind, day, n in run(
                "SELECT kind, day, SUM(n) FROM rollup_distinct WHERE kind IN"
                f" ('session', 'user', 'post') AND {where} GROUP BY kind, day",
                key,
            ):
                distinct[day][kind] = int(n)
        with timer("distinct"):
            range_distinct = {
                kind: int(n)
                for kind, n in run(
                    "SELECT kind, SUM(n) FROM rollup_distinct WHERE kind IN"
                    f" ('session', 'user', 'post') AND {where} AND prev_day < ? GROUP BY kind",
                    (*key, first),
                )
            }
        return rollup_days(
            counts=counts, peaks=peaks, distinct=distinct, durations=durations, errors=errors
        ), rollup_total(
            counts=counts, distinct=range_distinct, durations=range_durations, errors=range_errors
        )

    def _rollup_top_posts(
        self, scope: Scope, first: int, last: int, *, limit: int
    ) -> Counter[tuple[int, int]]:
        """Exact rollup session counts of enough posts that raw additions cannot lift an
        unlisted post above the cut (``4 * limit`` of the best, ties by id)."""
        wanted = limit * 4
        window = (first, last, first)
        if scope.blog_id is not None:
            clauses, params = ["blog_id = ?", "post_id != 0"], [scope.blog_id]
            if scope.post_id is not None:
                clauses.append("post_id = ?")
                params.append(scope.post_id)
            rows = self._reader.execute(
                "SELECT blog_id, post_id, SUM(n) AS sessions FROM rollup_distinct"
                f" WHERE kind = 'session' AND {' AND '.join(clauses)}"
                " AND day BETWEEN ? AND ? AND prev_day < ? GROUP BY blog_id, post_id"
                " ORDER BY sessions DESC, blog_id, post_id LIMIT ?",
                [*params, *window, wanted],
            )
            return Counter({(int(b), int(p)): int(n) for b, p, n in rows})
        # Everything: walk posts by their all-time sessions (an upper bound for any range)
        # and stop once the bound falls below the best `wanted` exact counts.
        found: Counter[tuple[int, int]] = Counter()
        cursor = self._reader.execute(
            "SELECT blog_id, post_id, sessions FROM rollup_post_totals ORDER BY sessions DESC"
        )
        while batch := cursor.fetchmany(64):
            if len(found) >= wanted:
                cut = sorted(found.values(), reverse=True)[wanted - 1]
                if int(batch[0][2]) < cut:
                    break
            found.update(
                self._rollup_sessions([(blog, post) for blog, post, _ in batch], first, last)
            )
        cursor.close()
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:wanted]
        return Counter({key: count for key, count in ranked if count})

    def _rollup_sessions(
        self, posts: Iterable[tuple[int, int]], first: int, last: int
    ) -> Counter[tuple[int, int]]:
        """The rollups' distinct sessions in ``[first, last]`` of each of ``posts``."""
        keys = json.dumps(list(posts))
        if keys == "[]":
            return Counter()
        # A subquery per post (a primary-key range each) beats a join that must then group.
        rows = self._reader.execute(
            "SELECT post.b, post.p, (SELECT COALESCE(SUM(d.n), 0) FROM rollup_distinct AS d"
            "  WHERE d.kind = 'session' AND d.blog_id = post.b AND d.post_id = post.p"
            "  AND d.day BETWEEN ? AND ? AND d.prev_day < ?)"
            " FROM (SELECT json_extract(value, '$[0]') AS b, json_extract(value, '$[1]') AS p"
            "  FROM json_each(?)) AS post",
            (first, last, first, keys),
        )
        return Counter({(int(blog), int(post)): int(n) for blog, post, n in rows})

    def _held(
        self, joined: Mapping[EntityKey, set[int]], first: int, last: int
    ) -> dict[EntityKey, set[int]]:
        """The joined entities the rollups hold on some day of ``[first, last]``, each with
        which of its joined days they hold (see `raw_figures`)."""
        # Two queries for all entities, each an indexed point lookup per entity or day.
        # Returning every day an entity is held would be far more rows: a user comes back
        # day after day.
        keys = list(joined)
        if not keys:
            return {}
        entity = (
            "e.kind = json_extract(j.value, '$[0]') AND e.blog_id = json_extract(j.value, '$[1]')"
            " AND e.post_id = json_extract(j.value, '$[2]')"
            " AND e.entity = json_extract(j.value, '$[3]')"
        )
        rows = self._reader.execute(
            "SELECT j.key FROM json_each(?) AS j WHERE EXISTS (SELECT 1 FROM"
            f" rollup_entity_days AS e WHERE {entity} AND e.day BETWEEN ? AND ?)",
            (json.dumps(keys), first, last),
        )
        held: dict[EntityKey, set[int]] = {keys[index]: set() for (index,) in rows}
        entity_days = [(*key, day) for key in held for day in joined[key]]
        if entity_days:
            rows = self._reader.execute(
                "SELECT j.key FROM json_each(?) AS j WHERE EXISTS (SELECT 1 FROM"
                f" rollup_entity_days AS e WHERE {entity}"
                " AND e.day = json_extract(j.value, '$[4]'))",
                (json.dumps(entity_days),),
            )
            for (index,) in rows:
                kind, blog, post, entity_id, day = entity_days[index]
                held[(kind, blog, post, entity_id)].add(day)
        return held


def _raw_clauses(scope: Scope, last_id: int) -> tuple[list[str], list[int]]:
    """The WHERE clauses (and parameters) of the scope's events since the last rollup."""
    # The unary + keeps SQLite on the id range (a few minutes of rows) rather than a
    # blog or time index that would visit months of them.
    clauses, params = ["id > ?", "+blog_id IS NOT NULL", "+post_id IS NOT NULL"], [last_id]
    if scope.blog_id is not None:
        clauses.append("+blog_id = ?")
        params.append(scope.blog_id)
    if scope.post_id is not None:
        clauses.append("+post_id = ?")
        params.append(scope.post_id)
    return clauses, params
