"""`PostgresSink`: writes each batch to the PostgreSQL event store, every event_id once ever.

One async psycopg connection, used by the engine's one writer: opened (and the schema
migrated) on the first write, reopened after it fails. A batch's ids are claimed in
``event_ids`` (``ON CONFLICT DO NOTHING``) and its claimed rows COPYed into ``events`` (see
`tracks.presence.postgresql_schema`), so a replayed batch, or the same event written by
another node, is stored once.

A lost or refused connection, a restarting server, a full disk
(``psycopg.OperationalError``, ``InterfaceError``) is a `TransientError`: retried, then
spooled. An event the columns cannot hold (an int beyond bigint, a NUL in a string) fails
the batch with psycopg's ``DataError``, which `tracks.outage.classify` reads as bad data:
the engine splits the batch, sets that event aside and writes the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tracks.event import Event
from tracks.presence import postgresql_schema as schema
from tracks.presence import postgresql_writing as writing
from tracks.sinks import TransientError

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresSink"]

logger = logging.getLogger(__name__)


class PostgresSink:
    """Writes batches to a PostgreSQL database.

    Args:
        url: ``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``).
        connect_timeout: seconds to wait for a connection before the write fails
            (transiently).

    Raises:
        ImportError: psycopg is not installed (the message names the extra).
        ValueError: a malformed URL.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self._psycopg = schema.import_psycopg()
        self.target = schema.parse_url(url)
        self.description = self.target.description
        self._connect_timeout = connect_timeout
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._partitions: set[int] = set()  # month starts known to have a partition
        # How many rows the last batches actually added (replays add none).
        self.inserted = 0

    async def write(self, batch: Sequence[Event]) -> None:
        psycopg = self._psycopg
        try:
            connection = await self._connect()
            await self._partitions_for(connection, batch)
            self.inserted += await writing.ainsert_events(connection, batch)
        except (psycopg.DataError, psycopg.IntegrityError):
            raise  # about the batch's data; the connection is still good
        except psycopg.errors.ProgramLimitExceeded:
            raise  # a value too big to index: about the data too
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            await self._drop_connection()
            raise TransientError(f"{self.description}: {_first_line(exc)}") from exc
        except BaseException:
            # Unexpected (a dropped table, a bug): start afresh, migrating, next time.
            await self._drop_connection()
            raise

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is not None and not self._connection.closed:
            return self._connection
        connection: psycopg.AsyncConnection[Any] = await self._psycopg.AsyncConnection.connect(
            self.target.conninfo,
            autocommit=True,
            connect_timeout=max(1, round(self._connect_timeout)),
            application_name="tracks",
        )
        try:
            await schema.amigrate(connection, self.target.schema)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._partitions.clear()
        logger.info("connected to %s", self.description)
        return connection

    async def _partitions_for(
        self, connection: psycopg.AsyncConnection[Any], batch: Sequence[Event]
    ) -> None:
        months = {writing.month_bounds(event.ts) for event in batch}
        missing = {m for m in months if m is not None and m[0] not in self._partitions}
        if not missing:
            return
        existing = await writing.aexisting_partitions(connection)
        wanted = {m for m in missing if writing.partition_name(m[0]) not in existing}
        if wanted:
            created = await writing.aensure_partitions(connection, self.target.schema, wanted)
            for name in created:
                logger.info("%s: created partition %s", self.description, name)
            existing = await writing.aexisting_partitions(connection)
            for start, _ in wanted:
                if writing.partition_name(start) not in existing:
                    logger.warning(
                        "%s: events of month %s stay in events_default, which holds rows of"
                        " that month already", self.description, writing.partition_name(start)
                    )
        self._partitions.update(start for start, _ in missing)

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # closing a broken connection: nothing more to lose
                logger.debug("%s: closing a failed connection failed", self.description)

    async def aclose(self) -> None:
        await self._drop_connection()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
