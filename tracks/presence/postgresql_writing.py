"""The write path of the PostgreSQL event store: monthly partitions, rows, and the
exactly-once insert. The tables and their migrations are `tracks.presence.postgresql_schema`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tracks.event import Event
from tracks.presence.postgresql_schema import (
    COLUMNS,
    INT64,
    PARTITION_YEARS,
    import_psycopg,
    lock_sql,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "Row",
    "aensure_partitions",
    "aexisting_partitions",
    "ainsert_events",
    "month_bounds",
    "partition_name",
    "row_from_event",
]

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
            await connection.execute(lock_sql(), (schema,))
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


