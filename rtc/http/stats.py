"""Presence stats over HTTP: `GET /api/stats`, `GET /api/stats/live`, and the rollup job.

`/api/stats?blog_id=&post_id=&since=&until=` answers the `tracks.stats` figures (the same
JSON as `tracks report --json`) from the server's event store, the first SQLite recorder.
Queries run in a worker thread on a read-only connection, never on the event loop.
`/api/stats/live` is "active now": sessions and contributors per loaded room and in total.
`run()` keeps the daily rollups current and, with a retention, prunes old raw events.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from rtc.http.errors import HttpError
from rtc.http.request import HttpRequest
from rtc.ids import id_from_text
from rtc.room import Room
from tracks import JSONValue
from tracks.event import now_ms
from tracks.presence.figures import DAY_MS
from tracks.presence.sqlite import open_stats_store
from tracks.presence.stats import Scope, parse_day

__all__ = ["StatsApi", "live_json"]

logger = logging.getLogger(__name__)

# Rows per rollup transaction in the server: the recorder waits for the write lock meanwhile
# (about half a second per 10,000 events on a 2-core machine; its busy timeout is 5 s).
ROLLUP_CHUNK = 10_000


def live_json(
    rooms: Iterable[Room], *, blog_id: int | None = None, post_id: int | None = None
) -> dict[str, JSONValue]:
    """Active now: sessions and contributors (distinct users) per room and in total."""
    listed: list[JSONValue] = []
    sessions = 0
    users: set[object] = set()
    for room in sorted(rooms, key=lambda room: room.key):
        key = room.key
        if (blog_id is not None and key.blog_id != blog_id) or (
            post_id is not None and key.post_id != post_id
        ):
            continue
        contributors = room.contributor_ids()
        if not room.session_count:
            continue
        sessions += room.session_count
        users.update(contributors)
        listed.append(
            {
                "blog_id": key.blog_id,
                "post_id": key.post_id,
                "sessions": room.session_count,
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


class StatsApi:
    """The stats endpoints and the periodic rollup of one server.

    Args:
        event_store: the SQLite event file (None: no stats, only live figures).
        rooms: the loaded rooms, for "active now".
        rollup_interval: seconds between rollup runs (0: never inside the server).
        retention_days: raw events older than this are deleted after each run (0: kept).
    """

    def __init__(
        self,
        *,
        event_store: Path | None,
        rooms: Callable[[], Iterable[Room]],
        rollup_interval: float,
        retention_days: int,
    ) -> None:
        self._event_store = event_store
        self._rooms = rooms
        self._rollup_interval = rollup_interval
        self._retention_days = retention_days
        self.rollups = 0
        self._rolled = anyio.Event()

    def live(self, request: HttpRequest) -> dict[str, JSONValue]:
        """``GET /api/stats/live``: active now, in this server's rooms.

        Raises:
            HttpError: 400 for a malformed scope.
        """
        scope = parse_scope(request, now_ms=now_ms())
        return live_json(self._rooms(), blog_id=scope.blog_id, post_id=scope.post_id)

    async def figures(self, request: HttpRequest) -> dict[str, JSONValue]:
        """``GET /api/stats``: the figures of a scope, queried off the event loop.

        Raises:
            HttpError: 400 for a malformed scope, 404 without an event store.
        """
        scope = parse_scope(request, now_ms=now_ms())
        store = self._event_store
        if store is None or not store.exists():
            raise HttpError(404, "no SQLite event store to read stats from")
        return await anyio.to_thread.run_sync(self._query, store, scope)

    @staticmethod
    def _query(store: Path, scope: Scope) -> dict[str, JSONValue]:
        # A connection per query: cheap next to the query, and never shared across threads.
        with open_stats_store(store) as stats:
            return stats.stats(scope, now_ms=now_ms())

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
        if store is None or not store.exists():
            return
        try:
            await anyio.to_thread.run_sync(self._roll_up, store)
        except sqlite3.Error:
            logger.exception("stats rollup of %s failed; retrying next interval", store)
        self.rollups += 1
        self._rolled.set()
        self._rolled = anyio.Event()

    async def rolled_up(self, count: int) -> None:
        """Wait until ``count`` rollup runs have finished (for tests and tools)."""
        while self.rollups < count:  # each wait ends when a run finishes
            await self._rolled.wait()

    def _roll_up(self, store: Path) -> None:
        now = now_ms()
        with open_stats_store(store) as stats:
            events = stats.aggregate(now_ms=now, chunk=ROLLUP_CHUNK)
            pruned = 0
            if self._retention_days:
                pruned = stats.prune(before_ms=now - self._retention_days * DAY_MS)
        logger.info("stats rollup: %d events rolled up, %d raw events pruned", events, pruned)
