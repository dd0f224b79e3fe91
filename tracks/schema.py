"""The SQLite event store's schema, version and migrations. Synchronous `sqlite3`; no asyncio here.

One row per event. The columns that reports filter and group on are real,
indexed columns; everything else stays in ``props`` (compact JSON, the full
property set, readable with SQLite's ``json_extract``). ``event_id`` is stored
as its 16 UUID bytes with a UNIQUE constraint, so ``INSERT OR IGNORE`` makes a
replayed batch a no-op.

The version lives in ``PRAGMA user_version``. To change the schema, append a
step to `MIGRATIONS`; `migrate()` applies the missing steps in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from tracks.event import Event, json_text

__all__ = [
    "COLUMNS",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaError",
    "connect",
    "event_from_row",
    "insert_events",
    "migrate",
    "row_from_event",
]

# Properties promoted to columns, in column order after (event_id, name, ts).
COLUMNS = ("blog_id", "post_id", "session_id", "wp_user_id")

MIGRATIONS: Sequence[Sequence[str]] = (
    # Version 1.
    (
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            event_id BLOB NOT NULL UNIQUE,
            name TEXT NOT NULL,
            ts INTEGER NOT NULL,
            blog_id INTEGER,
            post_id INTEGER,
            session_id TEXT,
            wp_user_id INTEGER,
            props TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_name_ts ON events (name, ts)",
        "CREATE INDEX events_post_session ON events (blog_id, post_id, session_id)",
        "CREATE INDEX events_user ON events (wp_user_id) WHERE wp_user_id IS NOT NULL",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

INSERT = (
    "INSERT OR IGNORE INTO events"
    " (event_id, name, ts, blog_id, post_id, session_id, wp_user_id, props)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

Row = tuple[bytes, str, int, object, object, object, object, str]


class SchemaError(RuntimeError):
    """The database was written by a newer version of `tracks`, or is not an event store."""


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open an event store: WAL mode, migrated to `SCHEMA_VERSION` unless ``readonly``.

    The connection may be handed between threads, but must be used by one at a time.
    """
    if readonly:
        connection = sqlite3.connect(
            f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            connection.close()
            raise SchemaError(f"{path}: schema version {version} is newer than {SCHEMA_VERSION}")
        return connection
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are opened explicitly, one per batch.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash
        # or power loss can lose the last transactions (sqlite.org/pragma.html#pragma_synchronous).
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        migrate(connection)
    except BaseException:
        connection.close()
        raise
    return connection


def migrate(connection: sqlite3.Connection) -> int:
    """Apply the missing migration steps in one transaction; return the new version.

    Raises:
        SchemaError: the database is newer than this code.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"event store schema version {version} is newer than this tracks "
                f"({SCHEMA_VERSION}); upgrade tracks"
            )
        for steps in MIGRATIONS[version:]:
            for statement in steps:
                connection.execute(statement)
        # PRAGMA takes no parameters; the value is an int we computed.
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return SCHEMA_VERSION


def row_from_event(event: Event) -> Row:
    props = event.props
    return (
        uuid.UUID(event.event_id).bytes,
        event.name,
        event.ts,
        _scalar(props.get("blog_id")),
        _scalar(props.get("post_id")),
        _text_or_none(props.get("session_id")),
        _scalar(props.get("wp_user_id")),
        json_text(event.props_json()),
    )


def _scalar(value: object) -> int | float | str | None:
    # Lists and objects stay in props only; a column holds a single value.
    return value if isinstance(value, int | float | str) else None


def _text_or_none(value: object) -> str | None:
    # Text whatever the caller sent, so "42" and 42 are one session.
    return None if value is None or not isinstance(value, int | float | str) else str(value)


def insert_events(connection: sqlite3.Connection, events: Iterable[Event]) -> int:
    """Insert a batch in one transaction; return how many rows were new."""
    rows = [row_from_event(event) for event in events]
    connection.execute("BEGIN IMMEDIATE")
    try:
        before = connection.total_changes
        connection.executemany(INSERT, rows)
        inserted = connection.total_changes - before
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return inserted


def event_from_row(event_id: bytes, name: str, ts: int, props: str) -> Event:
    """Rebuild an `Event` from the stored ``event_id``, ``name``, ``ts`` and ``props``."""
    return Event(name, json.loads(props), ts=ts, event_id=str(uuid.UUID(bytes=event_id)))
