"""The document store: each room's Yjs updates in one SQLite file, written in batches.

An update is applied in memory first, then queued here and written within
`flush_interval` (one transaction per batch, WAL, off the event loop), so a crash loses at
most that window. A room's rows are compacted into one update when it is unloaded or has
grown past `compact_after` rows.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup

from rtc.ids import RoomKey

__all__ = ["DocumentStore"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    blog_id INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_room ON updates (blog_id, post_id, seq);
"""


class DocumentStore:
    """Persists documents across restarts. Use as `async with DocumentStore(path) as store:`.

    Args:
        path: the SQLite file.
        flush_interval: seconds a batch may wait before it is written.
        compact_after: rows a room may have before it is compacted.
    """

    def __init__(
        self, path: Path, *, flush_interval: float = 0.1, compact_after: int = 1000
    ) -> None:
        if flush_interval <= 0 or compact_after < 1:
            raise ValueError("flush_interval must be > 0 and compact_after >= 1")
        self.path = path
        self._flush_interval = flush_interval
        self.compact_after = compact_after
        self._pending: list[tuple[int, int, bytes]] = []
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._connection: sqlite3.Connection | None = None
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._closed = anyio.Event()  # set by aclose(): cuts the batching wait short
        self.rows: dict[RoomKey, int] = {}

    async def __aenter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = await anyio.to_thread.run_sync(self._open)
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._write_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write everything queued, then close the file."""
        if self._task_group is None:
            return
        self._closing = True
        self._closed.set()
        self._wake.set()
        task_group, self._task_group = self._task_group, None
        await task_group.__aexit__(None, None, None)
        # A locked file or a full disk at shutdown: keep trying for a while, then say
        # clearly what could not be written rather than crash the exit.
        for attempt in range(10):
            try:
                await self.flush()
                break
            except sqlite3.Error:
                logger.warning("flushing documents to %s failed (attempt %d)", self.path,
                               attempt + 1, exc_info=attempt == 0)
                await anyio.sleep(min(0.1 * 2**attempt, 2.0))
        else:
            logger.error("%d document updates could not be written to %s",
                         len(self._pending), self.path)
        async with self._lock:
            if self._connection is not None:
                await anyio.to_thread.run_sync(self._connection.close)
                self._connection = None

    def append(self, key: RoomKey, update: bytes) -> None:
        """Queue an applied update; never blocks."""
        self._pending.append((key.blog_id, key.post_id, update))
        self.rows[key] = self.rows.get(key, 0) + 1
        self._wake.set()

    async def load(self, key: RoomKey) -> list[bytes]:
        """Every stored update of a room, oldest first (queued ones included).

        Reads only: queued updates are taken from memory, so a file another process holds
        locked delays a load (SQLite's busy timeout) but does not fail it.
        """
        room = (key.blog_id, key.post_id)
        async with self._lock:
            rows = await anyio.to_thread.run_sync(self._select, key)
            rows += [update for (*item, update) in self._pending if tuple(item) == room]
        self.rows[key] = len(rows)
        return rows

    async def compact(self, key: RoomKey, state_of: Callable[[], bytes]) -> None:
        """Replace a room's rows by one update holding its whole state.

        `state_of` is called once everything older is written, and the room's queued updates
        are dropped in the same step: the state includes them, and anything applied later is
        queued afterwards, so nothing is lost or written twice.
        """
        room = (key.blog_id, key.post_id)
        async with self._lock:
            try:
                await self._write_pending()
            except sqlite3.Error:
                # Compaction is an optimisation: skip it; the write loop retries the queue.
                logger.exception("compacting %s in %s failed; will retry writing", key, self.path)
                self._wake.set()
                return
            state = state_of()
            self._pending = [item for item in self._pending if item[:2] != room]
            try:
                await anyio.to_thread.run_sync(self._replace, key, state)
            except sqlite3.Error:
                # The state holds every update just dropped from the queue: queue it instead.
                logger.exception("compacting %s in %s failed; will retry writing", key, self.path)
                self._pending.append((*room, state))
                self.rows[key] = self.rows.get(key, 0) + 1
                self._wake.set()
                return
        self.rows[key] = 1

    def forget(self, key: RoomKey) -> None:
        """Stop tracking an unloaded room's row count."""
        self.rows.pop(key, None)

    async def flush(self) -> None:
        """Write everything queued so far."""
        async with self._lock:
            await self._write_pending()

    # --- internals ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake = anyio.Event()
            # Batch what arrives within the interval into one transaction (a close cuts the
            # wait short: the final flush follows at once).
            with anyio.move_on_after(self._flush_interval):
                await self._closed.wait()
            try:
                await self.flush()
            except sqlite3.Error:
                # Kept queued; retried on the next wake. A locked or full disk is reported.
                logger.exception("writing document updates to %s failed; will retry", self.path)
                self._wake.set()
                with anyio.move_on_after(1.0):
                    await self._closed.wait()

    async def _write_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        try:
            await anyio.to_thread.run_sync(self._insert, batch)
        except BaseException:
            self._pending[:0] = batch
            raise

    def _open(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has document schema {version}; this server knows {SCHEMA_VERSION}"
            )
        with connection:
            connection.executescript(_SCHEMA)
            connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return connection

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the document store is not open")
        return self._connection

    def _insert(self, batch: list[tuple[int, int, bytes]]) -> None:
        with self._db() as db:
            db.executemany("INSERT INTO updates (blog_id, post_id, data) VALUES (?, ?, ?)", batch)

    def _select(self, key: RoomKey) -> list[bytes]:
        cursor = self._db().execute(
            "SELECT data FROM updates WHERE blog_id = ? AND post_id = ? ORDER BY seq",
            (key.blog_id, key.post_id),
        )
        return [bytes(row[0]) for row in cursor]

    def _replace(self, key: RoomKey, state: bytes) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM updates WHERE blog_id = ? AND post_id = ?", (key.blog_id, key.post_id)
            )
            db.execute(
                "INSERT INTO updates (blog_id, post_id, data) VALUES (?, ?, ?)",
                (key.blog_id, key.post_id, state),
            )
