"""Archiving old events of a PostgreSQL event store into day files. Blocking psycopg.

`archive_postgresql` writes each UTC day older than the cut into the archive exactly as
`tracks.presence.archive.archive_store` does for SQLite (`write_day`: merged, fsynced, read
back and checked, renamed into place), and only once every day is there does it remove
them from the store: whole monthly partitions dropped, rows deleted in the partial month
(`tracks.presence.postgresql_rollup.prune`). A crash leaves each event in the store, the
archive, or both; a re-run finishes without duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tracks.event import Event
from tracks.presence import postgresql_rollup as rollup
from tracks.presence import postgresql_schema as schema
from tracks.presence.archive import ArchiveResult, day_path, write_day
from tracks.presence.figures import DAY_MS

__all__ = ["archive_postgresql"]

logger = logging.getLogger(__name__)

_EPOCH = date(1970, 1, 1)


def archive_postgresql(
    url: str, directory: str | Path, *, before_ms: int, upto_id: int | None = None
) -> ArchiveResult:
    """Move the events with ``ts < before_ms`` (and ``id <= upto_id``: `tracks archive`
    passes the rollups' ``last_id``, so the store's figures keep the days that leave it)
    into ``directory``. Rows stored while it runs are left for the next run.

    Raises:
        SchemaError: no event store at ``url``.
    """
    psycopg = schema.import_psycopg()
    target = schema.parse_url(url)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(target.conninfo, autocommit=True, connect_timeout=10) as connection:
        schema.schema_version(connection, target.schema)
        row = connection.execute(
            "SELECT MAX(id) FROM events WHERE ts < %s AND id <= %s",
            (before_ms, schema.INT64[1] if upto_id is None else upto_id),
        ).fetchone()
        newest = row[0] if row else None
        if newest is None:
            return ArchiveResult(days=(), archived=0, deleted=0)
        days: list[date] = []
        archived = 0
        for (day_number,) in connection.execute(
            "SELECT DISTINCT ts / %s FROM events WHERE ts < %s AND id <= %s ORDER BY 1",
            (DAY_MS, before_ms, newest),
        ).fetchall():
            day = _EPOCH + timedelta(days=int(day_number))
            start = int(day_number) * DAY_MS
            end = min(start + DAY_MS, before_ms)
            archived += write_day(root, day, _events_between(connection, start, end, newest))
            days.append(day)
            logger.info("archived %s to %s", day, day_path(root, day))
        deleted = rollup.prune(connection, before_ms=before_ms, upto_id=int(newest))
    return ArchiveResult(days=tuple(days), archived=archived, deleted=deleted)


def _events_between(connection: Any, start: int, end: int, upto_id: int) -> Iterator[Event]:
    with connection.transaction(), connection.cursor(name="tracks_archive") as cursor:
        cursor.itersize = 5_000
        cursor.execute(
            f"SELECT {schema.SELECT_EVENT} FROM events WHERE ts >= %s AND ts < %s AND id <= %s"
            " ORDER BY ts, id",
            (start, end, upto_id),
        )
        for row in cursor:
            yield schema.event_from_row(*row)
