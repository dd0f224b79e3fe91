"""The PostgreSQL event store's schema, version, migrations, partitions and batch insert.

Not a connection manager: callers bring a psycopg connection (async for the sink, sync for
the CLI). psycopg is imported lazily, inside the functions that need it, so importing this
module (and `tracks`) works without the ``rtc-presence[postgresql]`` extra.

**Tables.** ``events`` holds one row per event: ``id`` (bigint identity: storage order),
``event_id`` (uuid), ``name``, ``ts`` (bigint, ms since the epoch), the promoted columns
``blog_id``, ``post_id``, ``wp_user_id`` (bigint) and ``session_id`` (text), and the other
properties in ``props`` (jsonb). A promoted property leaves ``props`` when its column holds
it exactly: an int id in the bigint range, a str session id; an int session id stays in
``props`` (which wins on reading) and the column holds its text, so ``session_id = '42'``
finds both kinds. The ``events_json`` view shows each row with its full properties.

**Partitions.** ``events`` is range-partitioned by ``ts``, one partition per UTC month
(``events_y2024m05``), created by the writer before it inserts a batch that needs one
(`ensure_partitions`); retention and archive detach or drop whole months. ``events_default``
catches what no month holds (a ts outside `PARTITION_YEARS`, or a month whose creation
failed), so an insert never fails for want of a partition.

**Exactly once.** A unique index on a partitioned table must include the partition key, so
``UNIQUE (event_id, ts)`` is all ``events`` could have: it would only hold if a logical
event always had the same ``ts``. It does not: the server's deterministic ids are uuid5 of
room, session, kind and *connect* time, while ``ts`` is the time of the join or leave, taken
by whichever node emits it (two nodes reaping the same session's leave stamp two times), and
client events without an id get a uuid5 of a time *bucket*, so retries within the bucket
share an id but not a ``ts``. Hence ``event_ids``: a small, unpartitioned table whose
primary key is ``event_id``, written in the same transaction as ``events``. A batch's
ids are inserted into ``event_ids`` with ``ON CONFLICT DO NOTHING RETURNING``; only the
rows whose id came back are then COPYed into ``events`` (directly: each row is parsed
once, never staged). Two nodes writing the same id at once: the second waits on the
primary key until the first commits, then skips it. ``event_ids.ts`` lets retention
delete the ids of the months it drops (an event replayed after its month is gone is
stored again, as on SQLite).

**Versions.** ``schema_version`` holds the version; `MIGRATIONS` is a list of steps, each a
list of statements; `migrate` applies the missing ones in one transaction under
``pg_advisory_xact_lock``, so N nodes starting at once migrate once and the others wait,
then find nothing to do. The rollup (stats) tables belong to the stats store: it adds its
own steps (or its own versioned tables) beside these, never edits a released step.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tracks.event import Event, JSONValue

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "COLUMNS",
    "EXTRA",
    "INT64",
    "MIGRATIONS",
    "PARTITION_YEARS",
    "ROLLUP_TABLES",
    "SCHEMA_VERSION",
    "SELECT_EVENT",
    "PostgresTarget",
    "SchemaError",
    "amigrate",
    "event_from_row",
    "import_psycopg",
    "lock_sql",
    "migrate",
    "parse_url",
    "schema_version",
]

EXTRA = "rtc-presence[postgresql]"
"""The optional extra that installs the driver."""

COLUMNS = ("blog_id", "post_id", "session_id", "wp_user_id")
"""Properties promoted to columns, in column order after (event_id, name, ts)."""

INT64 = (-(2**63), 2**63 - 1)
"""What a bigint column holds."""

PARTITION_YEARS = (2000, 2200)
"""Months with a partition of their own: from the first year up to (not including) the last."""


# -- rollup tables (the stats store's; same design as SQLite's, see tracks.presence.rollup) --

ROLLUP_TABLES: Sequence[str] = (
    """CREATE TABLE rollup_state (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        last_id bigint NOT NULL, rolled_at bigint NOT NULL)""",
    "INSERT INTO rollup_state (last_id, rolled_at) VALUES (0, 0)",
    """CREATE TABLE rollup_counts (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, day integer NOT NULL,
        joins bigint NOT NULL, blocked bigint NOT NULL, PRIMARY KEY (blog_id, post_id, day))""",
    """CREATE TABLE rollup_errors (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, day integer NOT NULL,
        code text NOT NULL, n bigint NOT NULL, PRIMARY KEY (blog_id, post_id, day, code))""",
    """CREATE TABLE rollup_durations (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, day integer NOT NULL,
        bucket integer NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (blog_id, post_id, day, bucket) INCLUDE (n))""",
    # INCLUDE (n): a range's histogram is an index-only scan (tens of thousands of rows
    # for everything over 90 days), not a heap visit per row.
    """CREATE TABLE rollup_peaks (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, day integer NOT NULL,
        sessions integer NOT NULL, users integer NOT NULL,
        PRIMARY KEY (blog_id, post_id, day))""",
    "CREATE INDEX rollup_peaks_day ON rollup_peaks (day)",
    # entity: a session (its text; 's' + text for a str id, so 42 and '42' stay two, as
    # in SQLite), a user id as text, '0' for a post.
    """CREATE TABLE rollup_entity_days (
        kind text NOT NULL, blog_id bigint NOT NULL, post_id bigint NOT NULL,
        entity text NOT NULL, day integer NOT NULL, prev_day integer NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, entity, day))""",
    """CREATE TABLE rollup_distinct (
        kind text NOT NULL, blog_id bigint NOT NULL, post_id bigint NOT NULL,
        day integer NOT NULL, prev_day integer NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (kind, blog_id, post_id, day, prev_day))""",
    """CREATE TABLE rollup_post_totals (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, sessions bigint NOT NULL,
        PRIMARY KEY (blog_id, post_id))""",
    "CREATE INDEX rollup_post_totals_sessions ON rollup_post_totals (sessions)",
    """CREATE TABLE rollup_open_posts (
        blog_id bigint NOT NULL, post_id bigint NOT NULL, PRIMARY KEY (blog_id, post_id))""",
    # Peaks are recomputed from one post's recent joins and leaves: a range, not its history.
    "CREATE INDEX events_post_ts ON events (blog_id, post_id, ts)",
)
"""Migration step 2: the rollup tables, filled by `tracks.presence.postgresql_rollup`."""


MIGRATIONS: Sequence[Sequence[str]] = (
    # Version 1: events, partitioned by month on ts, and the ids that make writes idempotent.
    (
        """
        CREATE TABLE events (
            id bigint GENERATED ALWAYS AS IDENTITY,
            event_id uuid NOT NULL,
            name text NOT NULL,
            ts bigint NOT NULL,
            blog_id bigint,
            post_id bigint,
            session_id text,
            wp_user_id bigint,
            props jsonb NOT NULL
        ) PARTITION BY RANGE (ts)
        """,
        "CREATE TABLE events_default PARTITION OF events DEFAULT",
        # Indexes on the parent are created on every partition, present and future.
        "CREATE INDEX events_id ON events (id)",
        "CREATE INDEX events_ts ON events (ts)",
        "CREATE INDEX events_name_ts ON events (name, ts)",
        "CREATE INDEX events_post_session ON events (blog_id, post_id, session_id)",
        "CREATE INDEX events_user ON events (wp_user_id) WHERE wp_user_id IS NOT NULL",
        """
        CREATE TABLE event_ids (
            event_id uuid PRIMARY KEY,
            ts bigint NOT NULL
        )
        """,
        # The full properties: each promoted column props lacks, put back (ints as numbers).
        """
        CREATE VIEW events_json AS
        SELECT id, event_id, name, ts, blog_id, post_id, session_id, wp_user_id,
               jsonb_strip_nulls(jsonb_build_object(
                   'blog_id', blog_id, 'post_id', post_id,
                   'session_id', session_id, 'wp_user_id', wp_user_id)) || props AS props
        FROM events
        """,
    ),
    # Version 2: the stats store's daily rollups (`tracks.presence.postgresql_rollup`).
    ROLLUP_TABLES,
    # Version 3: only the indexes a query uses (each one costs every insert). ts is
    # searched by range only (the open-visits scan of the last 24 h, archive, prune): a BRIN
    # index, a few pages per partition, serves that since rows arrive roughly in ts order.
    # No query looks events up by (name, ts) or by wp_user_id.
    (
        "DROP INDEX IF EXISTS events_ts",
        "DROP INDEX IF EXISTS events_name_ts",
        "DROP INDEX IF EXISTS events_user",
        "CREATE INDEX events_ts_brin ON events USING brin (ts)",
    ),
    # Version 4: a day's posts by their stored peak, highest first, so that a query with
    # fresh events finds the best untouched post's peak in a few index rows instead of
    # reading every post's row of the day (`tracks.presence.postgresql_peaks.day_peaks`).
    (
        "CREATE INDEX rollup_peaks_day_sessions ON rollup_peaks (day, sessions DESC)"
        " INCLUDE (blog_id, post_id) WHERE post_id != 0",
        "CREATE INDEX rollup_peaks_day_users ON rollup_peaks (day, users DESC)"
        " INCLUDE (blog_id, post_id) WHERE post_id != 0",
    ),
    # Later steps go here.
)
SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS schema_version (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version integer NOT NULL
    )
"""

SELECT_EVENT = "event_id, name, ts, blog_id, post_id, session_id, wp_user_id, props"
"""The columns `event_from_row` takes, in order."""

# Serialises migrations and partition creation per schema: pg_advisory_xact_lock(key, schema).
_LOCK_SPACE = 0x7472_6B73  # "trks"


class SchemaError(RuntimeError):
    """The database was written by a newer version of `tracks`, or holds no event store."""


def import_psycopg() -> Any:
    """The psycopg module, or an `ImportError` that names the extra to install."""
    try:
        import psycopg
    except ImportError as exc:
        raise ImportError(
            f"PostgreSQL needs the psycopg driver: pip install '{EXTRA}'"
        ) from exc
    return psycopg


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """Where a ``postgresql://`` URL points.

    Attributes:
        conninfo: the URL as libpq takes it (``schema`` removed).
        schema: the schema that holds the tables (created if missing).
        description: the URL without its password, for logs.
    """

    conninfo: str
    schema: str
    description: str


def parse_url(url: str) -> PostgresTarget:
    """``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``) to a target.

    Raises:
        ValueError: not such a URL, or an empty schema name.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("postgresql", "postgres") or not url.strip()[
        len(parts.scheme) + 1 :
    ].startswith("//"):
        raise ValueError(f"not a postgresql:// URL: {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    schemas = [value for key, value in query if key == "schema"]
    schema = schemas[-1] if schemas else "public"
    if not schema:
        raise ValueError(f"{url!r}: schema= needs a name")
    rest = urlencode([(key, value) for key, value in query if key != "schema"])
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, rest, ""))
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    shown = urlunsplit(("postgresql", netloc, parts.path, "", ""))
    return PostgresTarget(
        conninfo=conninfo,
        schema=schema,
        description=shown if schema == "public" else f"{shown}?schema={schema}",
    )


def lock_sql() -> str:
    return f"SELECT pg_advisory_xact_lock({_LOCK_SPACE}, hashtext(%s))"


def _plan(version: int) -> list[str]:
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"event store schema version {version} is newer than this tracks "
            f"({SCHEMA_VERSION}); upgrade tracks"
        )
    return [statement for step in MIGRATIONS[version:] for statement in step]


def _search_path(schema: str) -> Any:
    sql = import_psycopg().sql
    return sql.SQL("SET search_path TO {}").format(sql.Identifier(schema))


def _create_schema(schema: str) -> Any:
    sql = import_psycopg().sql
    return sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))


def migrate(connection: psycopg.Connection[Any], schema: str) -> int:
    """Create ``schema`` if missing, point the session's search_path at it, and apply the
    missing migration steps in one transaction under an advisory lock; return the version.

    Raises:
        SchemaError: the store is newer than this code.
    """
    with connection.transaction():
        connection.execute(lock_sql(), (schema,))
        connection.execute(_create_schema(schema))
        connection.execute(_search_path(schema))
        connection.execute(_VERSION_TABLE)
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        for statement in _plan(0 if row is None else row[0]):
            connection.execute(statement)
        _set_version(connection, row is None)
    return SCHEMA_VERSION


async def amigrate(connection: psycopg.AsyncConnection[Any], schema: str) -> int:
    """`migrate` on an async connection."""
    async with connection.transaction():
        await connection.execute(lock_sql(), (schema,))
        await connection.execute(_create_schema(schema))
        await connection.execute(_search_path(schema))
        await connection.execute(_VERSION_TABLE)
        cursor = await connection.execute("SELECT version FROM schema_version")
        row = await cursor.fetchone()
        for statement in _plan(0 if row is None else row[0]):
            await connection.execute(statement)
        await connection.execute(*_version_statement(row is None))
    return SCHEMA_VERSION


def _version_statement(new: bool) -> tuple[str, tuple[int]]:
    if new:
        return "INSERT INTO schema_version (version) VALUES (%s)", (SCHEMA_VERSION,)
    return "UPDATE schema_version SET version = %s", (SCHEMA_VERSION,)


def _set_version(connection: psycopg.Connection[Any], new: bool) -> None:
    connection.execute(*_version_statement(new))


def schema_version(connection: psycopg.Connection[Any], schema: str) -> int:
    """Point the session's search_path at ``schema`` and return its version, migrating nothing.

    Raises:
        SchemaError: no event store there, or one newer than this code.
    """
    connection.execute(_search_path(schema))
    row = connection.execute(
        "SELECT to_regclass('schema_version') IS NOT NULL"
        " AND to_regclass('events') IS NOT NULL"
    ).fetchone()
    if not (row and row[0]):
        raise SchemaError(f"no event store in schema {schema!r}")
    version_row = connection.execute("SELECT version FROM schema_version").fetchone()
    version = 0 if version_row is None else int(version_row[0])
    _plan(version)  # raises if newer
    return version


def event_from_row(
    event_id: uuid.UUID | str,
    name: str,
    ts: int,
    blog_id: int | None,
    post_id: int | None,
    session_id: str | None,
    wp_user_id: int | None,
    props: dict[str, JSONValue] | str,
) -> Event:
    """Rebuild an `Event` from a row selected with `SELECT_EVENT`."""
    full: dict[str, JSONValue] = {}
    for key, value in (
        ("blog_id", blog_id),
        ("post_id", post_id),
        ("session_id", session_id),
        ("wp_user_id", wp_user_id),
    ):
        if value is not None:
            full[key] = value
    full.update(json.loads(props) if isinstance(props, str) else props)  # props wins
    return Event(name, full, ts=ts, event_id=str(event_id))
