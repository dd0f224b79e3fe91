"""The SQLite event store's schema, version and migrations. Synchronous `sqlite3`; no asyncio here.

One row per event. The properties that reports filter and group on
(`COLUMNS`) are real, indexed columns; the rest stay in ``props`` as compact
JSON. A promoted property is kept out of ``props`` when its column holds it
exactly (an int id, an int or str session id), which saves about a quarter of
the disk; `event_from_row` puts it back, and the ``events_json`` view shows
every row with its full properties as JSON (``json_extract`` works on it).
``event_id`` is stored as its 16 UUID bytes with a UNIQUE constraint, so
``INSERT OR IGNORE`` makes a replayed batch a no-op.

The version lives in ``PRAGMA user_version``. To change the schema, append a
step to `MIGRATIONS`; `migrate()` applies the missing steps in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from tracks.event import Event, JSONValue

__all__ = [
    "COLUMNS",
    "ERROR_CODE_SQL",
    "MIGRATIONS",
    "ROLLUP_TABLES",
    "ROLLUP_VERSION",
    "SCHEMA_VERSION",
    "SELECT_EVENT",
    "SchemaError",
    "connect",
    "connect_for_reading",
    "create_rollup_tables",
    "delete_events",
    "event_from_row",
    "insert_events",
    "kind_sql",
    "migrate",
    "row_from_event",
]

# The page cache of a writing connection, in KiB. Every page a connection writes or reads
# stays in its cache until the cache is full, so a long-running server's memory grows with
# its event file up to this bound (over 15 minutes in bench/soak.py): it is kept small
# between batches (batches of 20 into 300k stored events cost the same with 1 or 4 MiB:
# the pages it misses are in the OS's cache) ...
CACHE_KIB = 1024
# ... and large while a backlog goes in, where random event ids spread each batch over the
# whole UNIQUE index (1M events: 33k -> 38k events/s with it, bench/bench_tracks.py).
BULK_CACHE_KIB = 64 * 1024
BULK_BATCH = 2_000
# A rollup or prune reads a day of events on a connection of its own, closed after the run.
ROLLUP_CACHE_KIB = 4 * 1024

# Properties promoted to columns, in column order after (event_id, name, ts).
COLUMNS = ("blog_id", "post_id", "session_id", "wp_user_id")

# "$._" never exists: property names cannot start with "_".
_INSERTS = ", ".join(f"'$.{column}', {column}" for column in COLUMNS)
_REMOVES = ", ".join(
    f"CASE WHEN {column} IS NULL AND json_type(props, '$.{column}') IS NULL"
    f" THEN '$.{column}' ELSE '$._' END"
    for column in COLUMNS
)

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
            session_id,  -- no type affinity: an int stays an int, a str a str
            wp_user_id INTEGER,
            props TEXT NOT NULL
        )
        """,
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_name_ts ON events (name, ts)",
        "CREATE INDEX events_post_session ON events (blog_id, post_id, session_id)",
        "CREATE INDEX events_user ON events (wp_user_id) WHERE wp_user_id IS NOT NULL",
        # The full properties: insert each promoted column that props lacks, then
        # take the nulls that inserted back out (Event never stores None).
        f"""
        CREATE VIEW events_json AS
        SELECT id, lower(hex(event_id)) AS event_id, name, ts,
               blog_id, post_id, session_id, wp_user_id,
               json_remove(json_insert(props, {_INSERTS}), {_REMOVES}) AS props
        FROM events
        """,
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
        # Only takes effect on a new file: 8 KiB pages make random-key index inserts (the
        # UNIQUE event_id) about a fifth cheaper than 4 KiB ones (bench/bench_tracks.py).
        connection.execute("PRAGMA page_size=8192")
        connection.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable across application crashes in WAL mode; only an OS crash
        # or power loss can lose the last transactions (sqlite.org/pragma.html#pragma_synchronous).
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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


ROLLUP_VERSION = 1
"""The version of the rollup tables, kept in ``rollup_state``."""

ROLLUP_TABLES: Sequence[str] = (
    # Created on the first rollup (`tracks.presence.rollup.aggregate`), not by `migrate()`:
    # a store that is never rolled up never pays for them.
    """CREATE TABLE IF NOT EXISTS rollup_state (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        version INTEGER NOT NULL, last_id INTEGER NOT NULL, rolled_at INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rollup_counts (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        joins INTEGER NOT NULL, blocked INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_errors (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        code TEXT NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day, code)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_durations (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day, bucket)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_peaks (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, day INTEGER NOT NULL,
        sessions INTEGER NOT NULL, users INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id, day)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rollup_peaks_day ON rollup_peaks (day)",
    """CREATE TABLE IF NOT EXISTS rollup_entity_days (
        kind TEXT NOT NULL, blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        entity NOT NULL, day INTEGER NOT NULL, prev_day INTEGER NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, entity, day)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS rollup_distinct (
        kind TEXT NOT NULL, blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        day INTEGER NOT NULL, prev_day INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, day, prev_day)) WITHOUT ROWID""",
    # Sessions a post ever had: an upper bound for any range, so top posts can stop early.
    """CREATE TABLE IF NOT EXISTS rollup_post_totals (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL, sessions INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS rollup_post_totals_sessions ON rollup_post_totals (sessions)",
    # Peaks are recomputed from one post's recent joins and leaves: a range, not its history.
    "CREATE INDEX IF NOT EXISTS events_post_ts ON events (blog_id, post_id, ts)",
    """CREATE TABLE IF NOT EXISTS rollup_open_posts (
        blog_id INTEGER NOT NULL, post_id INTEGER NOT NULL,
        PRIMARY KEY (blog_id, post_id)) WITHOUT ROWID""",
)




def create_rollup_tables(connection: sqlite3.Connection) -> None:
    """Create the rollup tables that are missing (inside the caller's transaction)."""
    for statement in ROLLUP_TABLES:
        connection.execute(statement)
    connection.execute(
        "INSERT OR IGNORE INTO rollup_state (singleton, version, last_id, rolled_at)"
        " VALUES (1, ?, 0, 0)",
        (ROLLUP_VERSION,),
    )


def kind_sql(column: str = "name") -> str:
    """SQL giving an event's kind from its name: join, leave, blocked, error, or NULL."""
    return (
        f"CASE WHEN {column} LIKE '%\\_join' ESCAPE '\\' THEN 'join'"
        f" WHEN {column} LIKE '%\\_leave' ESCAPE '\\' THEN 'leave'"
        f" WHEN {column} LIKE '%\\_blocked' ESCAPE '\\' THEN 'blocked'"
        f" WHEN {column} LIKE '%\\_connection\\_error' ESCAPE '\\' THEN 'error' END"
    )


ERROR_CODE_SQL = (
    "COALESCE(CAST(COALESCE(json_extract(props, '$.error_code'),"
    " json_extract(props, '$.close_code'), json_extract(props, '$.code')) AS TEXT), 'unknown')"
)


# Which value types each promoted column stores exactly, so props can leave them out.
EXACT: dict[str, tuple[type, ...]] = {
    "blog_id": (int,),
    "post_id": (int,),
    "session_id": (int, str),
    "wp_user_id": (int,),
}

_ENCODER = json.JSONEncoder(
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    # Event props are read-only mappings; tuples already encode as arrays.
    default=lambda value: dict(value),
)


def row_from_event(event: Event) -> Row:
    props = dict(event.props)
    columns: list[object] = []
    for name, exact in EXACT.items():
        value = props.get(name)
        if type(value) in exact:
            del props[name]
            columns.append(value)
        else:
            # Lists and objects stay in props only; a column holds a single value.
            columns.append(value if isinstance(value, int | float | str) else None)
    return (
        bytes.fromhex(event.event_id.replace("-", "")),
        event.name,
        event.ts,
        columns[0],
        columns[1],
        columns[2],
        columns[3],
        _ENCODER.encode(props),
    )


def insert_events(connection: sqlite3.Connection, events: Iterable[Event]) -> int:
    """Insert a batch in one transaction; return how many rows were new.

    A batch of `BULK_BATCH` events or more (a backlog) goes in with a `BULK_CACHE_KIB`
    page cache, then the connection is back to `CACHE_KIB`.
    """
    rows = [row_from_event(event) for event in events]
    bulk = len(rows) >= BULK_BATCH
    if bulk:
        connection.execute(f"PRAGMA cache_size=-{BULK_CACHE_KIB}")
    try:
        connection.execute("BEGIN IMMEDIATE")
        try:
            before = connection.total_changes
            connection.executemany(INSERT, rows)
            inserted = connection.total_changes - before
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
    finally:
        if bulk:
            connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return inserted


def delete_events(
    connection: sqlite3.Connection,
    *,
    since_ms: int | None = None,
    until_ms: int,
    upto_id: int | None = None,
) -> int:
    """Delete the events with ``since_ms <= ts < until_ms`` (and ``id <= upto_id``) in one
    transaction; return how many rows went.

    ``upto_id`` bounds a delete to rows a caller has already seen (and, say, archived), so
    rows stored meanwhile with an old ``ts`` are left for next time.
    """
    clauses, params = ["ts < ?"], [until_ms]
    if since_ms is not None:
        clauses.append("ts >= ?")
        params.append(since_ms)
    if upto_id is not None:
        clauses.append("id <= ?")
        params.append(upto_id)
    connection.execute("BEGIN IMMEDIATE")
    try:
        cursor = connection.execute(f"DELETE FROM events WHERE {' AND '.join(clauses)}", params)
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")
    return cursor.rowcount


SELECT_EVENT = "event_id, name, ts, blog_id, post_id, session_id, wp_user_id, props"
"""The columns `event_from_row` takes, in order."""


def event_from_row(
    event_id: bytes,
    name: str,
    ts: int,
    blog_id: object,
    post_id: object,
    session_id: object,
    wp_user_id: object,
    props: str,
) -> Event:
    """Rebuild an `Event` from a row selected with `SELECT_EVENT`."""
    full: dict[str, JSONValue] = {}
    for key, value in (
        ("blog_id", blog_id),
        ("post_id", post_id),
        ("session_id", session_id),
        ("wp_user_id", wp_user_id),
    ):
        if isinstance(value, int | str):
            full[key] = value
    full.update(json.loads(props))  # what props holds is the original; it wins
    return Event(name, full, ts=ts, event_id=str(uuid.UUID(bytes=event_id)))


def connect_for_reading(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the store, or an empty store's when the file was created
    but never written (a recorder opens its file before its first batch)."""
    connection = connect(path, readonly=True)
    if connection.execute("PRAGMA user_version").fetchone()[0] == 0:
        connection.close()
        connection = connect(":memory:")
    return connection
