"""`SqliteSink`: inserts each batch into the SQLite event store in one transaction.

All `sqlite3` calls run in a worker thread (`anyio.to_thread`), never on the
event loop. The schema and its migrations live in `tracks.presence.sqlite_schema`.

A locked database, an I/O error or a full disk (``sqlite3.OperationalError``) is a
`TransientError`: retried, then spooled. An event the columns cannot hold (an int
beyond the 64-bit INTEGER, a lone surrogate) rolls the batch back with the error
``sqlite3`` raised (``OverflowError``, ``UnicodeEncodeError``...), which
`tracks.outage.classify` reads as bad data: the engine splits the batch, sets that
event aside and writes the rest.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import anyio.to_thread

from tracks.event import Event
from tracks.presence import sqlite_schema as schema
from tracks.sinks import TransientError

__all__ = ["SqliteSink"]


class SqliteSink:
    """Writes batches to a SQLite file with ``INSERT OR IGNORE`` on ``event_id``.

    Args:
        path: the database file; created, with its directory, on first write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.description = f"sqlite://{self.path}"
        self._connection: sqlite3.Connection | None = None
        # How many rows the last batches actually added (replays add none).
        self.inserted = 0

    async def write(self, batch: Sequence[Event]) -> None:
        try:
            self.inserted += await anyio.to_thread.run_sync(self._write, batch)
        except sqlite3.OperationalError as exc:
            # "database is locked", "disk I/O error", a full disk: worth another try.
            raise TransientError(f"sqlite {self.path}: {exc}") from exc

    def _write(self, batch: Sequence[Event]) -> int:
        if self._connection is None:
            self._connection = schema.connect(self.path)
        return schema.insert_events(self._connection, batch)

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await anyio.to_thread.run_sync(connection.close)
