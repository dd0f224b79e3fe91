"""Reading events back from PostgreSQL: every event, or the last ones and then each new one.

Synchronous psycopg, for the CLI (``tracks tail``) and offline tools; `tracks.presence.reading`
sends ``postgresql://`` sources here. Nothing is migrated: a database without an event
store is an error, not a store to create.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from tracks.event import Event
from tracks.presence import postgresql_schema as schema

__all__ = ["follow_postgresql", "is_postgresql_url", "read_postgresql"]

COMMIT_GRACE = 30.0
"""Seconds a gap in ``id`` may take to fill. Ids are drawn when a row is inserted but seen
when its transaction commits, and two writers (two nodes) commit in either order, so a
follower keeps looking below the newest id it has seen for this long before it moves on."""

_FETCH = 5_000


def is_postgresql_url(source: object) -> bool:
    """Whether ``source`` is a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(source, str) and source.strip().lower().startswith(
        ("postgresql:", "postgres:")
    )


def _connect(url: str) -> Any:
    psycopg = schema.import_psycopg()
    target = schema.parse_url(url)
    connection = psycopg.connect(
        target.conninfo, autocommit=True, connect_timeout=10, application_name="tracks"
    )
    try:
        schema.schema_version(connection, target.schema)
    except BaseException:
        connection.close()
        raise
    return connection


def read_postgresql(url: str) -> Iterator[Event]:
    """Every event stored at ``url``, ordered by (ts, id), read in chunks (a server cursor).

    Raises:
        ImportError: psycopg is not installed.
        SchemaError: no event store there.
    """
    connection = _connect(url)
    try:
        with connection.transaction(), connection.cursor(name="tracks_read") as cursor:
            cursor.itersize = _FETCH
            cursor.execute(f"SELECT {schema.SELECT_EVENT} FROM events ORDER BY ts, id")
            for row in cursor:
                yield schema.event_from_row(*row)
    finally:
        connection.close()


def follow_postgresql(
    url: str, *, last: int = 10, poll_interval: float = 0.5, forever: bool = True
) -> Iterator[Event]:
    """The last ``last`` events stored at ``url`` (by id), then each new one as it commits."""
    connection = _connect(url)
    select = f"SELECT id, {schema.SELECT_EVENT} FROM events"
    try:
        # One statement, so the newest id and the rows shown come from one snapshot.
        rows = connection.execute(
            f"SELECT * FROM ({select} ORDER BY id DESC LIMIT greatest(%s, 1)) AS newest"
            " ORDER BY id",
            (last,),
        ).fetchall()
        # Everything at or below `floor` has been seen or never will be; above it, `seen`.
        floor = rows[-1][0] if rows else 0
        rows = rows[-last:] if last > 0 else []
        seen: set[int] = set()
        marks: deque[tuple[float, int]] = deque()  # (when, newest id seen by then)
        while True:
            for row_id, *rest in rows:
                if row_id > floor:
                    seen.add(row_id)
                yield schema.event_from_row(*rest)
            if not forever:
                return
            time.sleep(poll_interval)
            now = time.monotonic()
            marks.append((now, max(seen, default=floor)))
            while marks and marks[0][0] <= now - COMMIT_GRACE:
                floor = max(floor, marks.popleft()[1])
            seen = {row_id for row_id in seen if row_id > floor}
            rows = [
                row
                for row in connection.execute(f"{select} WHERE id > %s ORDER BY id", (floor,))
                if row[0] not in seen
            ]
    finally:
        connection.close()
