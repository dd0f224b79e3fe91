"""Presence stats over HTTP: `GET /api/stats`, `GET /api/stats/live`, and the rollup job.

`/api/stats?blog_id=&post_id=&since=&until=` answers the `tracks.stats` figures (the same
JSON as `tracks report --json`) from the server's event store, the first SQLite recorder.
Queries run in a worker thread on a read-only connection, never on the event loop.
`/api/stats/live` is "active now": sessions and contributors per loaded room and in total
(in cluster mode, per room with sessions on any node, from the shared roster).
`run()` keeps the daily rollups current and, with a retention, prunes old raw events.

What one request may cost is bounded: the range (``max_days``, a 400 beyond), how many
queries run at once (`MAX_QUERIES`; a 503 when no slot frees within `QUEUE_WAIT`), and how
long one runs (`QUERY_BUDGET`; then it is interrupted, a 503). A query whose client is gone
is interrupted too: its SQLite statement stops, not only the wait for it.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from rtc.cluster.outcomes import Registration
from rtc.heap import release_free_memory
from rtc.http.errors import HttpError
from rtc.http.request import HttpRequest
from rtc.http.roster import user_ids
from rtc.ids import RoomKey, id_from_text
from rtc.room import Room
from tracks import JSONValue
from tracks.event import now_ms
from tracks.presence.figures import DAY_MS, day_of
from tracks.presence.postgresql_schema import parse_url
from tracks.presence.reading import store_exists
from tracks.presence.stats import QueryCancelledError, Scope, StatsStore, parse_day
from tracks.presence.stores import open_stats_store

__all__ = [
    "MAX_QUERIES",
    "QUERY_BUDGET",
    "QUEUE_WAIT",
    "QueryCounts",
    "StatsApi",
    "cluster_live_json",
    "live_json",
]

logger = logging.getLogger(__name__)

# Events per rollup pass in the server (what one pass holds in a temporary table). The
# recorder waits for the write lock only while a pass writes its results, not while it reads
# (40,000 soak events: 0.55 s of lock in one pass; in 10,000-event passes 4 x 0.25 s, and
# every pass recomputed the peaks of every post it touched: 6.6 s in all, one pass 2.9 s).
ROLLUP_CHUNK = 50_000

MAX_QUERIES = 2
"""Stats queries running at once (each holds a core while it runs)."""
QUEUE_WAIT = 1.0
"""Seconds a stats request waits for a free query slot before a 503."""
QUERY_BUDGET = 5.0
"""Seconds one stats query may run before it is interrupted (a 503). A rolled-up 90-day
query takes tens of ms (README, *Stats*); websockets drops a GET answer after 10 s anyway."""


def live_json(
    rooms: Iterable[Room], *, blog_id: int | None = None, post_id: int | None = None
) -> dict[str, JSONValue]:
    """Active now: sessions and contributors (distinct users) per room and in total."""
    return _live(
        ((room.key, room.session_count, room.contributor_ids()) for room in rooms),
        blog_id=blog_id, post_id=post_id,
    )


def cluster_live_json(
    rooms: Mapping[RoomKey, Sequence[Registration]],
    *,
    blog_id: int | None = None,
    post_id: int | None = None,
) -> dict[str, JSONValue]:
    """`live_json` over the cluster's shared roster (cluster mode): every node's sessions."""
    return _live(
        ((key, len(sessions), user_ids(sessions)) for key, sessions in rooms.items()),
        blog_id=blog_id, post_id=post_id,
    )


def _live(
    rooms: Iterable[tuple[RoomKey, int, tuple[int, ...]]],
    *,
    blog_id: int | None,
    post_id: int | None,
) -> dict[str, JSONValue]:
    listed: list[JSONValue] = []
    sessions = 0
    users: set[int] = set()
    for key, session_count, contributors in sorted(rooms, key=lambda room: room[0]):
        if (blog_id is not None and key.blog_id != blog_id) or (
            post_id is not None and key.post_id != post_id
        ):
            continue
        if not session_count:
            continue
        sessions += session_count
        users.update(contributors)
        listed.append(
            {
                "blog_id": key.blog_id,
                "post_id": key.post_id,
                "sessions": session_count,
                "contributors": len(contributors),
            }
        )
    return {"active_sessions": sessions, "active_contributors": len(users), "rooms": listed}


def _id(request: HttpRequest, name: str) -> int | None:
    text = request.query(name)
    if text is None:
        return None
    value = id_from_text(text)
    if value is None:
        raise HttpError(400, f"{name} must be a positive integer")
    return value


def parse_scope(request: HttpRequest, *, now_ms: int) -> Scope:
    """The `Scope` of a request's query string.

    Raises:
        HttpError: 400 for malformed ids or days.
    """
    since, until = request.query("since"), request.query("until")
    try:
        return Scope(
            blog_id=_id(request, "blog_id"),
            post_id=_id(request, "post_id"),
            since_day=parse_day(since, now_ms=now_ms) if since else None,
            until_day=parse_day(until, now_ms=now_ms, until=True) if until else None,
        )
    except ValueError as error:
        raise HttpError(400, str(error)) from None


@dataclass(slots=True)
class QueryCounts:
    """What became of the stats queries of one server (for tests, tools and metrics)."""

    started: int = 0
    """Queries that got a slot and began."""
    answered: int = 0
    """Queries that finished with figures."""
    over_budget: int = 0
    """Queries interrupted when they ran past the time budget (answered 503)."""
    abandoned: int = 0
    """Queries interrupted because their client went away or the request was cancelled."""
    failed: int = 0
    """Queries that failed (a store that cannot be read: a 500)."""
    busy: int = 0
    """Requests refused because no query slot freed in time (503)."""

    @property
    def ended(self) -> int:
        """Queries that began and are over, whichever way."""
        return self.answered + self.over_budget + self.abandoned + self.failed


class _Query:
    """One stats query in its worker thread; `cancel()` from any thread interrupts it."""

    def __init__(self, source: str | Path, scope: Scope, now_ms: int) -> None:
        self._source, self._scope, self._now_ms = source, scope, now_ms
        self._lock = threading.Lock()
        self._store: StatsStore | None = None
        self._cancelled = False
        self.reason: str | None = None
        """Why it was cancelled: ``"budget"`` or ``"gone"`` (None: not cancelled)."""

    def run(self) -> dict[str, JSONValue]:
        with self._lock:
            if self._cancelled:
                raise QueryCancelledError("the stats query was cancelled")
            # A connection per query: cheap next to the query, and never shared across threads.
            store = self._store = open_stats_store(self._source)
        try:
            return store.stats(self._scope, now_ms=self._now_ms)
        finally:
            with self._lock:
                self._store = None
                store.close()

    def cancel(self, reason: str) -> None:
        """Interrupt the query (no-op once it is over). Thread-safe."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            self.reason = reason
            if self._store is not None:
                self._store.interrupt()


class StatsApi:
    """The stats endpoints and the periodic rollup of one server.

    Args:
        event_store: the event store: a SQLite file's path or a ``postgresql://`` URL, as
            `tracks.open_stats_store` takes it (None: no stats, only live figures).
        rooms: the loaded rooms, for "active now".
        rollup_interval: seconds between rollup runs (0: never inside the server).
        retention_days: raw events older than this are deleted after each run (0: kept).
        max_days: the longest range ``GET /api/stats`` answers, in days (a 400 beyond;
            `ServerConfig.max_stats_days`). An open ``since`` starts that many days
            before ``until``.
        max_queries: queries running at once (None: `MAX_QUERIES`).
        queue_wait: seconds a request waits for a slot, then 503 (None: `QUEUE_WAIT`).
        query_budget: seconds a query may run, then it is interrupted and answered 503
            (None: `QUERY_BUDGET`).

    Raises:
        ValueError: a limit below 1 (``max_days``, ``max_queries``) or a negative time.
    """

    def __init__(
        self,
        *,
        event_store: str | Path | None,
        rooms: Callable[[], Iterable[Room]],
        rollup_interval: float,
        retention_days: int,
        max_days: int = 400,
        max_queries: int | None = None,
        queue_wait: float | None = None,
        query_budget: float | None = None,
    ) -> None:
        self._event_store = event_store
        self._rooms = rooms
        self._rollup_interval = rollup_interval
        self._retention_days = retention_days
        self._max_days = max_days
        max_queries = MAX_QUERIES if max_queries is None else max_queries
        self._queue_wait = QUEUE_WAIT if queue_wait is None else queue_wait
        self._query_budget = QUERY_BUDGET if query_budget is None else query_budget
        if max_days < 1 or max_queries < 1:
            raise ValueError("max_days and max_queries must be >= 1")
        if self._queue_wait < 0 or self._query_budget <= 0:
            raise ValueError("queue_wait must be >= 0 and query_budget > 0")
        self._slots = anyio.Semaphore(max_queries)
        self.queries = QueryCounts()
        self._queries_changed = anyio.Event()
        self.rollups = 0
        self._rolled = anyio.Event()

    def live(self, request: HttpRequest) -> dict[str, JSONValue]:
        """``GET /api/stats/live``: active now, in this server's rooms.

        Raises:
            HttpError: 400 for a malformed scope.
        """
        scope = parse_scope(request, now_ms=now_ms())
        return live_json(self._rooms(), blog_id=scope.blog_id, post_id=scope.post_id)

    async def cluster_live(
        self,
        request: HttpRequest,
        read: Callable[[], Awaitable[Mapping[RoomKey, Sequence[Registration]]]],
    ) -> dict[str, JSONValue]:
        """``GET /api/stats/live`` in cluster mode: active now on every node, from the
        shared roster that `read` fetches (what it raises propagates).

        Raises:
            HttpError: 400 for a malformed scope (before anything is read).
        """
        scope = parse_scope(request, now_ms=now_ms())
        rooms = await read()
        return cluster_live_json(rooms, blog_id=scope.blog_id, post_id=scope.post_id)

    async def figures(
        self, request: HttpRequest, *, disconnected: Awaitable[object] | None = None
    ) -> dict[str, JSONValue]:
        """``GET /api/stats``: the figures of a scope, queried off the event loop.

        Args:
            request: the request (its query string is the scope).
            disconnected: completes when the client is gone (websockets'
                ``ServerConnection.connection_lost_waiter``); the query is then interrupted.
                Awaited at most once.

        Raises:
            HttpError: 400 for a malformed scope or a range over ``max_days``, 404 without
                an event store, 503 when the server is busy with other stats queries, when
                the query runs past its time budget, or when the client went away.
        """
        now = now_ms()
        scope = parse_scope(request, now_ms=now)
        try:
            scope = scope.bounded(max_days=self._max_days, today=day_of(now))
        except ValueError as error:
            raise HttpError(400, str(error)) from None
        store = self._event_store
        if store is None or not store_exists(store):
            raise HttpError(404, "no SQLite or PostgreSQL event store to read stats from")
        if not await self._take_slot():
            self._count("busy")
            raise HttpError(
                503, "too many stats queries at once; try again shortly",
                headers={"Retry-After": "1"},
            )
        try:
            return await self._run(_Query(store, scope, now), disconnected)
        finally:
            self._slots.release()

    async def _take_slot(self) -> bool:
        """Take a query slot, waiting at most ``queue_wait`` seconds; False: none freed."""
        try:
            self._slots.acquire_nowait()
            return True
        except anyio.WouldBlock:
            pass
        with anyio.move_on_after(self._queue_wait):
            await self._slots.acquire()
            return True
        return False

    async def _run(
        self, query: _Query, disconnected: Awaitable[object] | None
    ) -> dict[str, JSONValue]:
        self._count("started")
        result: dict[str, JSONValue] | None = None
        failure: Exception | None = None
        async with anyio.create_task_group() as watchers:
            watchers.start_soon(self._watch, query, disconnected)
            try:
                # The watcher's cancel() makes the thread end within a few ms, and this
                # waits for it: the slot stays taken until then. Only when this request is
                # cancelled (server shutdown, websockets' open timeout) does it stop waiting;
                # the finally clause then interrupts the thread.
                result = await anyio.to_thread.run_sync(query.run, abandon_on_cancel=True)
            except QueryCancelledError:
                pass
            except Exception as error:  # raised below, not wrapped in an ExceptionGroup
                failure = error
            except BaseException:  # this request was cancelled
                self._count("abandoned")
                raise
            finally:
                query.cancel("gone")  # a cancelled request: stop the thread; no-op when done
                watchers.cancel_scope.cancel()
        if failure is not None:
            self._count("failed")
            raise failure
        if result is not None:
            self._count("answered")
            return result
        if query.reason == "budget":
            self._count("over_budget")
            logger.warning("stats query interrupted after %g s", self._query_budget)
            raise HttpError(
                503,
                f"the stats query ran past its {self._query_budget:g} s budget;"
                " ask for fewer days or one blog",
            )
        self._count("abandoned")
        raise HttpError(503, "the stats request was abandoned")

    async def _watch(self, query: _Query, disconnected: Awaitable[object] | None) -> None:
        with anyio.move_on_after(self._query_budget):
            if disconnected is None:
                await anyio.sleep_forever()
            else:
                await disconnected
            query.cancel("gone")
            return
        query.cancel("budget")

    def _count(self, name: str) -> None:
        setattr(self.queries, name, getattr(self.queries, name) + 1)
        self._queries_changed.set()
        self._queries_changed = anyio.Event()

    async def queries_reach(self, predicate: Callable[[QueryCounts], bool]) -> None:
        """Wait until ``predicate(self.queries)`` holds (for tests and tools)."""
        while not predicate(self.queries):  # each wait ends when a count changes
            await self._queries_changed.wait()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Roll up (and prune) at once, then every ``rollup_interval`` seconds until
        cancelled. The first run catches up a store that was written without a server."""
        task_status.started()
        if not self._rollup_interval or self._event_store is None:
            return
        while True:
            await self.roll_up()
            await anyio.sleep(self._rollup_interval)

    async def roll_up(self) -> None:
        """One rollup run (and prune) in a worker thread. A failed run is logged; the next
        one starts over from the last committed chunk."""
        store = self._event_store
        if store is None or not store_exists(store):
            return
        try:
            await anyio.to_thread.run_sync(self._roll_up, store)
        except Exception as error:
            if not _is_store_error(error):
                raise
            logger.exception(
                "stats rollup of %s failed; retrying next interval", _shown(store)
            )
        self.rollups += 1
        self._rolled.set()
        self._rolled = anyio.Event()

    async def rolled_up(self, count: int) -> None:
        """Wait until ``count`` rollup runs have finished (for tests and tools)."""
        while self.rollups < count:  # each wait ends when a run finishes
            await self._rolled.wait()

    def _roll_up(self, store: str | Path) -> None:
        now = now_ms()
        with open_stats_store(store) as stats:
            events = stats.aggregate(now_ms=now, chunk=ROLLUP_CHUNK)
            pruned = 0
            if self._retention_days:
                pruned = stats.prune(before_ms=now - self._retention_days * DAY_MS)
        logger.info("stats rollup: %d events rolled up, %d raw events pruned", events, pruned)
        release_free_memory()  # what the run read is freed; give the pages back


def _is_store_error(error: Exception) -> bool:
    """A store that cannot be read or written right now (SQLite's or PostgreSQL's error)."""
    psycopg = sys.modules.get("psycopg")
    return isinstance(error, sqlite3.Error | OSError) or (
        psycopg is not None and isinstance(error, psycopg.Error)
    )


def _shown(store: str | Path) -> str:
    """The store as a log line may show it (a URL without its password)."""
    try:
        return parse_url(str(store)).description
    except ValueError:
        return str(store)
