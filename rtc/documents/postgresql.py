"""Documents in PostgreSQL: one store that several server nodes share.

Each node appends only the updates its own clients sent (so an update is written once however
many nodes hold the room); a load on any node reads every row of the room. Compaction runs
under a transaction-scoped advisory lock keyed by the room, reads the rows, merges them with
the node's state and deletes exactly the rows it read (by id) in the transaction that inserts
the merged state: a row another node commits meanwhile is neither lost nor deleted.

One connection, reopened after a failure; the queue and retries are `BatchedDocuments'`.
The schema is versioned and migrated at start under an advisory lock, so N nodes starting at
once migrate once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import psycopg
from psycopg import sql
from pycrdt import Doc

from rtc.documents.batching import BatchedDocuments, Item, StoreUnavailableError
from rtc.ids import RoomKey

__all__ = ["SCHEMA_VERSION", "PostgresDocuments", "redact"]

T = TypeVar("T")

# Seconds one statement (or a connection attempt) may take before the connection is
# dropped and the write retried: a database that stops answering is an outage, not a hang.
OPERATION_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5

# Forward migrations, applied in order; the version is how many have run.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE {documents} (
        blog_id bigint NOT NULL,
        post_id bigint NOT NULL,
        id bigserial PRIMARY KEY,
        update bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX {documents_room} ON {documents} (blog_id, post_id, id);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)


def lock_key(*parts: object) -> int:
    """A signed 64-bit advisory lock key for these parts (a collision only skips a job)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def compaction_lock_key(schema: str | None, key: RoomKey) -> int:
    """The advisory lock a room's compaction holds (one schema's rooms, one lock each)."""
    return lock_key("rtc.documents.compact", schema, key.blog_id, key.post_id)


def redact(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def split_schema(url: str) -> tuple[str, str | None]:
    """The connection URL for libpq and the `?schema=NAME` it carried (not a libpq option)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((value for name, value in query if name == "schema"), None)
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    if schema == "":
        raise ValueError(f"empty ?schema= in {redact(url)}")
    return urlunsplit(parts._replace(query=rest)), schema


def merged(updates: list[bytes]) -> bytes:
    """One update holding what all of these hold (a fresh doc's full state)."""
    doc: Doc[Any] = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc.get_update()


class PostgresDocuments(BatchedDocuments):
    """Documents in PostgreSQL. Use as `async with PostgresDocuments(url) as store:`.

    Args:
        url: ``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``).
        flush_interval: seconds a batch may wait before it is written.
        compact_after: rows a room may have (as this node counts them) before it is compacted.
    """

    transient = (psycopg.Error, StoreUnavailableError)

    def __init__(self, url: str, *, flush_interval: float = 0.1, compact_after: int = 1000) -> None:
        super().__init__(redact(url), flush_interval=flush_interval, compact_after=compact_after)
        self._conninfo, self.schema = split_schema(url)
        self._connection: psycopg.AsyncConnection[Any] | None = None
        table = (self.schema, "documents") if self.schema else ("documents",)
        self._table = sql.Identifier(*table)
        self._version_table = sql.Identifier(
            *((self.schema, "documents_schema") if self.schema else ("documents_schema",))
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def _open(self) -> None:
        # At start a database that cannot be reached is a configuration error: fail fast.
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        ) as connection:
            await self._migrate(connection)

    async def _close(self) -> None:
        await self._drop()

    async def _migrate(self, connection: psycopg.AsyncConnection[Any]) -> None:
        async with connection.transaction():
            await connection.execute(
                "SELECT pg_advisory_xact_lock(%s)", (lock_key("rtc.documents.migrate"),)
            )
            if self.schema:
                await connection.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema))
                )
            await connection.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(
                    self._version_table
                )
            )
            cursor = await connection.execute(
                sql.SQL("SELECT max(version) FROM {}").format(self._version_table)
            )
            row = await cursor.fetchone()
            version = (row[0] if row else None) or 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.description} has document schema {version}; "
                    f"this server knows {SCHEMA_VERSION}"
                )
            index = sql.Identifier("documents_room")  # indexes live in their table's schema
            for migration in _MIGRATIONS[version:]:
                await connection.execute(
                    sql.SQL(migration).format(documents=self._table, documents_room=index)
                )
            if version < SCHEMA_VERSION:
                await connection.execute(
                    sql.SQL("DELETE FROM {}").format(self._version_table)
                )
                await connection.execute(
                    sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(self._version_table),
                    (SCHEMA_VERSION,),
                )

    async def _connected(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
            )
        return self._connection

    async def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await connection.close()

    async def _run(self, operation: Callable[..., Awaitable[T]], *args: object) -> T:
        """Run `operation(connection, *args)` on the connection; a failure drops it."""
        try:
            with anyio.fail_after(OPERATION_TIMEOUT):
                connection = await self._connected()
                return await operation(connection, *args)
        except TimeoutError as error:
            await self._drop()
            raise StoreUnavailableError(f"no answer within {OPERATION_TIMEOUT} s") from error
        except psycopg.Error:
            await self._drop()
            raise

    # --- rows --------------------------------------------------------------------------

    async def _insert(self, batch: list[Item]) -> None:
        await self._run(self._insert_on, batch)

    async def _select(self, key: RoomKey) -> list[bytes]:
        return [update for _, update in await self._run(self._select_on, key)]

    async def _replace(self, key: RoomKey, state: bytes) -> bool:
        return await self._run(self._replace_on, key, state)

    async def _insert_on(self, connection: psycopg.AsyncConnection[Any], batch: list[Item]) -> None:
        # COPY: the batch streams in one statement (bench/bench_store.py: ~100,000 updates/s).
        query = sql.SQL("COPY {} (blog_id, post_id, update) FROM STDIN").format(self._table)
        async with (
            connection.transaction(),
            connection.cursor() as cursor,
            cursor.copy(query) as copy,
        ):
            for row in batch:
                await copy.write_row(row)

    async def _select_on(
        self, connection: psycopg.AsyncConnection[Any], key: RoomKey
    ) -> list[tuple[int, bytes]]:
        cursor = await connection.execute(
            sql.SQL(
                "SELECT id, update FROM {} WHERE blog_id = %s AND post_id = %s ORDER BY id"
            ).format(self._table),
            (key.blog_id, key.post_id),
        )
        return [(row[0], bytes(row[1])) for row in await cursor.fetchall()]

    async def _replace_on(
        self, connection: psycopg.AsyncConnection[Any], key: RoomKey, state: bytes
    ) -> bool:
        async with connection.transaction():
            cursor = await connection.execute(
                "SELECT pg_try_advisory_xact_lock(%s)",
                (compaction_lock_key(self.schema, key),),
            )
            row = await cursor.fetchone()
            if not (row and row[0]):
                return False  # another node is compacting this room right now
            rows = await self._select_on(connection, key)
            # Rows other nodes wrote may not be in this node's document yet: merge them in.
            combined = await anyio.to_thread.run_sync(
                merged, [update for _, update in rows] + [state]
            )
            await connection.execute(
                sql.SQL("DELETE FROM {} WHERE id = ANY(%s)").format(self._table),
                ([row_id for row_id, _ in rows],),
            )
            await connection.execute(
                sql.SQL("INSERT INTO {} (blog_id, post_id, update) VALUES (%s, %s, %s)").format(
                    self._table
                ),
                (key.blog_id, key.post_id, combined),
            )
        return True
