"""Documents in one SQLite file: the embedded default for a single server.

One transaction per batch, WAL, off the event loop (a worker thread). The queue, retries and
compaction are `BatchedDocuments`'; this module only reads and writes rows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio

from rtc.documents.batching import BatchedDocuments, Item
from rtc.ids import RoomKey

__all__ = ["SqliteDocuments"]

SCHEMA_VERSION = 1
CACHE_KIB = 1024  # the page cache, in KiB
_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    blog_id INTEGER NOT NULL,
    post_id INTEGER NOT NULL,
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_room ON updates (blog_id, post_id, seq);
"""


class SqliteDocuments(BatchedDocuments):
    """Persists documents across restarts. Use as `async with SqliteDocuments(path) as store:`.

    Args:
        path: the SQLite file.
        flush_interval: seconds a batch may wait before it is written.
        compact_after: rows a room may have before it is compacted.
    """

    transient = (sqlite3.Error,)

    def __init__(
        self, path: Path, *, flush_interval: float = 0.1, compact_after: int = 1000
    ) -> None:
        super().__init__(str(path), flush_interval=flush_interval, compact_after=compact_after)
        self.path = path
        self._connection: sqlite3.Connection | None = None

    async def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = await anyio.to_thread.run_sync(self._connect)

    async def _close(self) -> None:
        if self._connection is not None:
            await anyio.to_thread.run_sync(self._connection.close)
            self._connection = None

    async def _insert(self, batch: list[Item]) -> None:
        await anyio.to_thread.run_sync(self._insert_sync, batch)

    async def _select(self, key: RoomKey) -> list[bytes]:
        return await anyio.to_thread.run_sync(self._select_sync, key)

    async def _replace(self, key: RoomKey, state: bytes) -> bool:
        # One process writes this file: every row of the room is in `state` already.
        await anyio.to_thread.run_sync(self._replace_sync, key, state)
        return True

    # --- in the worker thread ----------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        # Pages read or written stay cached up to this bound; what a room's load or a batch
        # misses is in the OS's cache. (SQLite's default, 2 MB, filled over 15 minutes of
        # bench/soak.py: memory that looked like growth.)
        connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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

    def _insert_sync(self, batch: list[Item]) -> None:
        with self._db() as db:
            db.executemany("INSERT INTO updates (blog_id, post_id, data) VALUES (?, ?, ?)", batch)

    def _select_sync(self, key: RoomKey) -> list[bytes]:
        cursor = self._db().execute(
            "SELECT data FROM updates WHERE blog_id = ? AND post_id = ? ORDER BY seq",
            (key.blog_id, key.post_id),
        )
        return [bytes(row[0]) for row in cursor]

    def _replace_sync(self, key: RoomKey, state: bytes) -> None:
        with self._db() as db:
            db.execute(
                "DELETE FROM updates WHERE blog_id = ? AND post_id = ?", (key.blog_id, key.post_id)
            )
            db.execute(
                "INSERT INTO updates (blog_id, post_id, data) VALUES (?, ?, ?)",
                (key.blog_id, key.post_id, state),
            )
