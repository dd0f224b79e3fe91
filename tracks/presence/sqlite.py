"""`SqliteStatsStore`: presence figures from a SQLite event store. Blocking `sqlite3`.

Figures combine the daily rollups (`tracks.rollup`) with the raw events stored since the
last rollup (row id above ``rollup_state.last_id``), so they are exact at any moment:
sums add up, distinct counts add only the entities the rollups have not seen in the range,
and the peaks of the posts touched since (or with sessions open at the last run) are
recomputed from raw events. Queries read through a read-only connection (``mode=ro``);
`aggregate()` and `prune()` open a writable one of their own.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Self

from tracks.presence import sqlite_schema as schema
from tracks.event import JSONValue
from tracks.presence.figures import DAY_MS, MAX_OPEN_MS, day_of, duration_bucket
from tracks.presence.reading import locate, read_events
from tracks.presence.rollup import ERROR_CODE_SQL, aggregate, compute_peaks, kind_sql, rollup_state
from tracks.presence.stats import TOP_POSTS, DayFigures, Scope, stats_json

__all__ = ["SqliteStatsStore", "open_stats_store"]

RawRow = tuple[str, int, int, object, "int | None", int, object, "str | None"]
"""(kind, blog_id, post_id, session_id, wp_user_id, ts, duration_ms, error code)."""

_DISTINCT_FIELD = {"session": "unique_sessions", "user": "unique_users", "post": "unique_posts"}


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
        self._reader = connection or schema.connect(self.path, readonly=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    # --- writing ---------------------------------------------------------------------

    def _writer(self) -> tuple[sqlite3.Connection, bool]:
        if self._given:
            return self._reader, False
        return schema.connect(self.path), True

    def aggregate(self, *, now_ms: int, chunk: int = 1_000_000) -> int:
        """Roll up new events, ``chunk`` rows per transaction (the recorder waits meanwhile)."""
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
            last_id, _ = rollup_state(writer)
            writer.execute("BEGIN IMMEDIATE")
            try:
                deleted = writer.execute(
                    "DELETE FROM events WHERE ts < ? AND id <= ?", (before_ms, last_id)
                ).rowcount
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            writer.execute("COMMIT")
            return int(deleted)
        finally:
            if owned:
                writer.close()

    # --- reading ---------------------------------------------------------------------

    def stats(
        self, scope: Scope, *, now_ms: int, timings: dict[str, float] | None = None
    ) -> dict[str, JSONValue]:
        """The figures; with ``timings``, also the seconds each part took (benchmarks)."""
        timer = _Timer(timings)
        connection = self._reader
        last_id, rolled_at = rollup_state(connection)
        with timer("raw"):
            raw = self._raw_rows(scope, last_id)
        today = day_of(now_ms)
        first = scope.since_day
        if first is None:
            first = self._first_day(scope, raw, today if last_id else None)
        last = today if scope.until_day is None else scope.until_day
        raw = [row for row in raw if first <= day_of(row[5]) <= last]
        total, days = DayFigures(), defaultdict[int, DayFigures](DayFigures)
        top: Counter[tuple[int, int]] = Counter()
        if last_id:
            self._read_rollups(scope, first, last, total, days, timer)
            with timer("top_posts"):
                top = self._rollup_top_posts(scope, first, last, limit=TOP_POSTS)
        with timer("raw"):
            self._add_raw(scope, raw, first, last, total, days, top, rolled_up=last_id > 0)
        with timer("peaks"):
            self._add_peaks(scope, raw, first, last, rolled_at, total, days, now_ms=now_ms)
        ranked = sorted(top.items(), key=lambda item: (-item[1], item[0]))[:TOP_POSTS]
        posts = [(blog, post, sessions) for (blog, post), sessions in ranked if sessions]
        return stats_json(total, dict(days), first, last, posts)

    def _first_day(self, scope: Scope, raw: list[RawRow], fallback: int | None) -> int:
        candidates = [day_of(row[5]) for row in raw]
        try:
            row = self._reader.execute(
                "SELECT MIN(day) FROM rollup_counts WHERE blog_id = ? AND post_id = ?",
                scope.level_key,
            ).fetchone()
            if row[0] is not None:
                candidates.append(int(row[0]))
        except sqlite3.OperationalError:
            pass  # not rolled up yet
        if candidates:
            return min(candidates)
        return fallback if fallback is not None else 0

    def _raw_rows(self, scope: Scope, last_id: int) -> list[RawRow]:
        """(kind, blog, post, session, user, ts, duration_ms, code) stored since the rollup."""
        # The unary + keeps SQLite on the id range (a few minutes of rows) rather than a
        # blog or time index that would visit months of them.
        clauses, params = ["id > ?", "+blog_id IS NOT NULL", "+post_id IS NOT NULL"], [last_id]
        if scope.blog_id is not None:
            clauses.append("+blog_id = ?")
            params.append(scope.blog_id)
        if scope.post_id is not None:
            clauses.append("+post_id = ?")
            params.append(scope.post_id)
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
            (str(kind), int(blog), int(post), session, user, int(ts), duration, code)
            for kind, blog, post, session, user, ts, duration, code in rows
        ]

    def _read_rollups(
        self, scope: Scope, first: int, last: int, total: DayFigures,
        days: defaultdict[int, DayFigures], timer: _Timer,
    ) -> None:
        run = self._reader.execute
        key = (*scope.level_key, first, last)
        where = "blog_id = ? AND post_id = ? AND day BETWEEN ? AND ?"
        with timer("joins_blocked"):
            for day, joins, blocked in run(
                f"SELECT day, joins, blocked FROM rollup_counts WHERE {where}", key
            ):
                days[day].joins += joins
                days[day].blocked += blocked
                total.joins += joins
                total.blocked += blocked
        with timer("errors"):
            for day, code, n in run(
                f"SELECT day, code, n FROM rollup_errors WHERE {where}", key
            ):
                days[day].errors[code] += n
                total.errors[code] += n
        with timer("durations"):
            for bucket, n in run(
                f"SELECT bucket, SUM(n) FROM rollup_durations WHERE {where} GROUP BY bucket", key
            ):
                total.durations[bucket] += n
            # Per day, only the two percentile buckets; the rows come in (day, bucket) order.
            rows = run(f"SELECT day, bucket, n FROM rollup_durations WHERE {where}", key)
            for day, group in groupby(rows.fetchall(), key=itemgetter(0)):
                days[day].percentile_buckets = _percentile_buckets(list(group))
        with timer("peaks"):
            for day, sessions, users in run(
                f"SELECT day, sessions, users FROM rollup_peaks WHERE {where}", key
            ):
                days[day].peak_sessions = sessions
                days[day].peak_users = users
        with timer("distinct_daily"):
            for kind, day, n in run(
                "SELECT kind, day, SUM(n) FROM rollup_distinct WHERE kind IN"
                f" ('session', 'user', 'post') AND {where} GROUP BY kind, day",
                key,
            ):
                field = _DISTINCT_FIELD[kind]
                setattr(days[day], field, getattr(days[day], field) + n)
        with timer("distinct"):
            for kind, n in run(
                "SELECT kind, SUM(n) FROM rollup_distinct WHERE kind IN"
                f" ('session', 'user', 'post') AND {where} AND prev_day < ? GROUP BY kind",
                (*key, first),
            ):
                setattr(total, _DISTINCT_FIELD[kind], int(n))

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
            "SELECT blog_id, post_id, sessions FROM rollup_post_totals"
            " ORDER BY sessions DESC"
        )
        while batch := cursor.fetchmany(64):
            if len(found) >= wanted:
                cut = sorted(found.values(), reverse=True)[wanted - 1]
                if int(batch[0][2]) < cut:
                    break
            for blog, post, _ in batch:
                found[(int(blog), int(post))] = self._rollup_post_sessions(
                    int(blog), int(post), first, last
                )
        cursor.close()
        ranked = sorted(found.items(), key=lambda item: (-item[1], item[0]))[:wanted]
        return Counter({key: count for key, count in ranked if count})

    def _rollup_post_sessions(self, blog_id: int, post_id: int, first: int, last: int) -> int:
        row = self._reader.execute(
            "SELECT COALESCE(SUM(n), 0) FROM rollup_distinct WHERE kind = 'session'"
            " AND blog_id = ? AND post_id = ? AND day BETWEEN ? AND ? AND prev_day < ?",
            (blog_id, post_id, first, last, first),
        ).fetchone()
        return int(row[0])

    def _day_durations(self, scope: Scope, day: int) -> Counter[int]:
        """The rolled-up duration histogram of one day (to add raw leaves to it)."""
        rows = self._reader.execute(
            "SELECT bucket, n FROM rollup_durations WHERE blog_id = ? AND post_id = ?"
            " AND day = ?",
            (*scope.level_key, day),
        )
        return Counter({int(bucket): int(n) for bucket, n in rows})

    def _seen(
        self, kind: str, blog_id: int, post_id: int, entity: object, first: int, last: int
    ) -> bool:
        """Whether the rollups hold this entity on a day within ``[first, last]``."""
        row = self._reader.execute(
            "SELECT 1 FROM rollup_entity_days WHERE kind = ? AND blog_id = ? AND post_id = ?"
            " AND entity = ? AND day BETWEEN ? AND ? LIMIT 1",
            (kind, blog_id, post_id, entity, first, last),
        ).fetchone()
        return row is not None

    def _add_raw(
        self, scope: Scope, raw: list[RawRow], first: int, last: int,
        total: DayFigures, days: defaultdict[int, DayFigures], top: Counter[tuple[int, int]],
        *, rolled_up: bool,
    ) -> None:
        level_blog, level_post = scope.level_key
        # Entities that joined, as their rollup keys: (kind, blog, post, entity) -> days.
        joined: dict[tuple[str, int, int, object], set[int]] = defaultdict(set)
        for kind, blog, post, session, user, ts, duration, code in raw:
            day = day_of(ts)
            figures = days[day]
            if kind == "join":
                figures.joins += 1
                total.joins += 1
                if session is not None:
                    joined[("session", blog, post, session)].add(day)
                joined[("post", blog, post, 0)].add(day)
                if user is not None:
                    joined[("user", level_blog, level_post, user)].add(day)
            elif kind == "blocked":
                figures.blocked += 1
                total.blocked += 1
            elif kind == "error":
                figures.errors[str(code)] += 1
                total.errors[str(code)] += 1
            elif kind == "leave" and isinstance(duration, int | float):
                if figures.percentile_buckets is not None and not figures.durations:
                    figures.durations = self._day_durations(scope, day)
                bucket = duration_bucket(int(duration))
                figures.durations[bucket] += 1
                total.durations[bucket] += 1
        new_sessions: Counter[tuple[int, int]] = Counter()
        for (kind, blog, post, entity), entity_days in joined.items():
            field = _DISTINCT_FIELD[kind]
            for day in entity_days:
                if not (rolled_up and self._seen(kind, blog, post, entity, day, day)):
                    setattr(days[day], field, getattr(days[day], field) + 1)
            if not (rolled_up and self._seen(kind, blog, post, entity, first, last)):
                setattr(total, field, getattr(total, field) + 1)
                if kind == "session":
                    new_sessions[(blog, post)] += 1
        for (blog, post), count in new_sessions.items():
            if (blog, post) not in top and rolled_up:
                top[(blog, post)] = self._rollup_post_sessions(blog, post, first, last)
            top[(blog, post)] += count

    def _add_peaks(
        self, scope: Scope, raw: list[RawRow], first: int, last: int,
        rolled_at: int, total: DayFigures, days: defaultdict[int, DayFigures], *, now_ms: int,
    ) -> None:
        touched: set[tuple[int, int, int]] = set()
        for kind, blog, post, _, _, ts, duration, _ in raw:
            if kind not in ("join", "leave"):
                continue
            if kind == "join":
                span = (ts, min(ts + MAX_OPEN_MS, now_ms))
            else:
                span = (ts - int(duration) if isinstance(duration, int | float) else ts, ts)
            for day in range(max(day_of(span[0]), first), min(day_of(span[1]), last) + 1):
                touched.add((blog, post, day))
        if rolled_at:
            for blog, post in self._reader.execute(
                "SELECT blog_id, post_id FROM rollup_open_posts"
            ):
                if scope.contains(blog, post):
                    # The last rollup saw their visits open until then; only a day begun
                    # since can hold a peak it has not (new visits come with raw events).
                    for day in range(
                        max(day_of(rolled_at) + 1, first), min(day_of(now_ms), last) + 1
                    ):
                        touched.add((blog, post, day))
        recomputed: dict[int, dict[tuple[int, int], tuple[int, int]]] = defaultdict(dict)
        for (blog, post, day), figures in compute_peaks(
            self._reader, touched, now_ms=now_ms
        ).items():
            recomputed[day][(blog, post)] = figures
        for day, posts in recomputed.items():
            # Recomputed post peaks replace the stored ones (a late leave can end a visit
            # that an earlier run saw open); the other posts keep theirs.
            stored = self._stored_post_peaks(scope, day) if rolled_at else {}
            stored.update(posts)
            days[day].peak_sessions = max(figures[0] for figures in stored.values())
            days[day].peak_users = max(figures[1] for figures in stored.values())
        total.peak_sessions = max((f.peak_sessions for f in days.values()), default=0)
        total.peak_users = max((f.peak_users for f in days.values()), default=0)

    def _stored_post_peaks(self, scope: Scope, day: int) -> dict[tuple[int, int], tuple[int, int]]:
        clauses, params = ["day = ?", "post_id != 0"], [day]
        if scope.blog_id is not None:
            clauses.append("blog_id = ?")
            params.append(scope.blog_id)
        if scope.post_id is not None:
            clauses.append("post_id = ?")
            params.append(scope.post_id)
        rows = self._reader.execute(
            f"SELECT blog_id, post_id, sessions, users FROM rollup_peaks"
            f" WHERE {' AND '.join(clauses)}",
            params,
        )
        return {(int(b), int(p)): (int(s), int(u)) for b, p, s, u in rows}


def _percentile_buckets(rows: list[tuple[int, int, int]]) -> tuple[int | None, int | None]:
    """The p50 and p90 buckets of one day's ``(day, bucket, n)`` rows in bucket order
    (nearest rank, as `tracks.figures.percentile`)."""
    total = sum(row[2] for row in rows)
    ranks = [max(-(-percent * total // 100), 1) for percent in (50, 90)]
    found: list[int | None] = [None, None]
    seen = 0
    for _, bucket, n in rows:
        seen += n
        for index, rank in enumerate(ranks):
            if found[index] is None and seen >= rank:
                found[index] = bucket
        if found[1] is not None:
            break
    return found[0], found[1]


class _Timer:
    """Adds the seconds each named part takes to ``timings`` (when given)."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self._timings = timings

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._timings is None:
            yield
            return
        started = time.perf_counter()
        try:
            yield
        finally:
            self._timings[name] = self._timings.get(name, 0.0) + time.perf_counter() - started


def open_stats_store(source: str | Path) -> SqliteStatsStore:
    """A `SqliteStatsStore` over a SQLite store, or over an in-memory copy of a JSONL one.

    Raises:
        FileNotFoundError: the store does not exist.
    """
    kind, path = locate(source)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}")
    if kind == "sqlite":
        return SqliteStatsStore(path)
    connection = schema.connect(":memory:")
    schema.insert_events(connection, read_events(path))
    return SqliteStatsStore(path, connection=connection)
