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
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tracks.event import Event, JSONValue

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "COLUMNS",
    "EXTRA",
    "MIGRATIONS",
    "ROLLUP_TABLES",
    "SCHEMA_VERSION",
    "SELECT_EVENT",
    "PostgresTarget",
    "SchemaError",
    "acreate_staging",
    "aensure_partitions",
    "aexisting_partitions",
    "ainsert_events",
    "amigrate",
    "event_from_row",
    "import_psycopg",
    "migrate",
    "month_bounds",
    "parse_url",
    "partition_name",
    "row_from_event",
    "schema_version",
]

EXTRA = "rtc-presence[postgresql]"
"""The optional extra that installs the driver."""

COLUMNS = ("blog_id", "post_id", "session_id", "wp_user_id")
"""Properties promoted to columns, in column order after (event_id, name, ts)."""

PARTITION_YEARS = (2000, 2200)
"""Months with a partition of their own: from the first year up to (not including) the last."""

INT64 = (-(2**63), 2**63 - 1)

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

# Claims the batch's ids; the ones that come back are new, and only their rows are then
# COPYed into events, in the same transaction: the ids and the rows commit together. A
# second writer of the same id waits on the primary key until the first commits, then
# skips it (or claims it, if the first rolled back).
_CLAIM = """
    INSERT INTO event_ids (event_id, ts)
    SELECT * FROM unnest(string_to_array(%s, ',')::uuid[], string_to_array(%s, ',')::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING event_id
"""
# Straight into the partitioned table, in batch order (so ``id`` keeps it and ties in ts
# read back in the order they were recorded): each row and its props are parsed once.
_COPY_EVENTS = (
    "COPY events (event_id, name, ts, blog_id, post_id, session_id, wp_user_id, props)"
    " FROM STDIN"
)

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


def _lock_sql() -> str:
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
        connection.execute(_lock_sql(), (schema,))
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
        await connection.execute(_lock_sql(), (schema,))
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


# -- partitions -------------------------------------------------------------


def month_bounds(ts: int) -> tuple[int, int] | None:
    """The [start, end) ms of the UTC month holding ``ts``, or None outside `PARTITION_YEARS`."""
    try:
        moment = datetime.fromtimestamp(ts / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if not PARTITION_YEARS[0] <= moment.year < PARTITION_YEARS[1]:
        return None
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()) * 1000, int(end.timestamp()) * 1000


def partition_name(start_ms: int) -> str:
    """``events_y2024m05`` for the month starting at ``start_ms``."""
    moment = datetime.fromtimestamp(start_ms / 1000, UTC)
    return f"events_y{moment.year:04d}m{moment.month:02d}"


async def aensure_partitions(
    connection: psycopg.AsyncConnection[Any], schema: str, months: Iterable[tuple[int, int]]
) -> list[str]:
    """Create the missing monthly partitions, each in its own transaction; return their names.

    A month whose rows already sit in the default partition cannot be split out while they
    are there (PostgreSQL refuses): that month stays in the default partition, with a
    warning left to the caller's log. Under the schema's advisory lock, so two writers never
    race to create the same month.
    """
    psycopg = import_psycopg()
    sql = psycopg.sql
    created = []
    for start, end in sorted(set(months)):
        name = partition_name(start)
        async with connection.transaction():
            await connection.execute(_lock_sql(), (schema,))
            cursor = await connection.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
            row = await cursor.fetchone()
            if row and row[0]:
                continue
            statement = sql.SQL(
                "CREATE TABLE {} PARTITION OF events FOR VALUES FROM ({}) TO ({})"
            ).format(sql.Identifier(name), sql.Literal(start), sql.Literal(end))
            try:
                async with connection.transaction():
                    await connection.execute(statement)
            except psycopg.errors.CheckViolation:
                # "updated partition constraint for default partition would be violated".
                continue
        created.append(name)
    return created


async def aexisting_partitions(connection: psycopg.AsyncConnection[Any]) -> set[str]:
    """The names of the monthly partitions of ``events`` in the current schema."""
    cursor = await connection.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass('events')"
    )
    return {row[0] for row in await cursor.fetchall()}


# -- rows -------------------------------------------------------------------


Row = tuple[int, str, str, int, object, object, object, object, str]

_ENCODER = json.JSONEncoder(
    separators=(",", ":"),
    ensure_ascii=False,
    allow_nan=False,
    # Event props are read-only mappings; tuples already encode as arrays.
    default=lambda value: dict(value),
)


def _column(name: str, value: object) -> tuple[object, bool]:
    """(what the column holds, whether props can leave the value out)."""
    if name == "session_id":
        if type(value) is str:
            return value, True
        if type(value) is int:
            return str(value), False  # props keeps the int; the column makes it findable
        return None, False
    if type(value) is int:
        # Out of range stays in the column, so PostgreSQL refuses it and the engine sets
        # the event aside (as SQLite's OverflowError does), rather than storing it half.
        return value, INT64[0] <= value <= INT64[1]
    return None, False


def row_from_event(ord_: int, event: Event) -> Row:
    """The staging row of an event (``ord_``: its place in the batch)."""
    props = dict(event.props)
    columns: list[object] = []
    for name in COLUMNS:
        value, exact = _column(name, props.get(name))
        if exact:
            del props[name]
        columns.append(value)
    return (
        ord_,
        event.event_id,
        event.name,
        event.ts,
        columns[0],
        columns[1],
        columns[2],
        columns[3],
        _ENCODER.encode(props),
    )


async def acreate_staging(connection: psycopg.AsyncConnection[Any]) -> None:
    """Nothing to do: `ainsert_events` needs no staging table any more (kept for callers)."""


async def ainsert_events(connection: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> int:
    """Insert a batch in one transaction, each event_id once ever; return how many were new.

    Two statements, one transaction: claim the batch's ids in ``event_ids`` (``ON CONFLICT
    DO NOTHING RETURNING``), then COPY the rows whose id was claimed into ``events``. The
    caller has created the partitions the batch needs (`aensure_partitions`).
    """
    rows: dict[str, Row] = {}
    for index, event in enumerate(events):
        if event.event_id not in rows:  # a batch may repeat an id: keep the first
            rows[event.event_id] = row_from_event(index, event)
    async with connection.transaction(), connection.cursor() as cursor:
        # Two strings, not 2n parameters: the cheapest way to ship the ids (uuids and ints
        # hold no commas).
        await cursor.execute(
            _CLAIM, (",".join(rows), ",".join([str(row[3]) for row in rows.values()]))
        )
        claimed = cursor.rowcount
        fresh: Collection[Row] = rows.values()
        if claimed != len(rows):  # some were stored before: only the claimed ones go in
            ids = {str(event_id) for (event_id,) in await cursor.fetchall()}
            fresh = [row for event_id, row in rows.items() if event_id in ids]
        if fresh:
            async with cursor.copy(_COPY_EVENTS) as copy:
                for row in fresh:
                    await copy.write_row(row[1:])
        return claimed


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
