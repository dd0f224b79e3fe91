"""`open_stats_store`: the `StatsStore` of any event store — SQLite, PostgreSQL, JSONL.

SQLite and PostgreSQL answer from their own tables and rollups; a JSONL store, or any store
read together with its archive, is copied into an in-memory SQLite store first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tracks.event import Event
from tracks.presence import sqlite_schema as schema
from tracks.presence.postgresql import PostgresStatsStore
from tracks.presence.postgresql_reading import is_postgresql_url
from tracks.presence.reading import locate, read_events
from tracks.presence.sqlite import SqliteStatsStore
from tracks.presence.stats import StatsStore

__all__ = ["open_stats_store"]


def open_stats_store(
    source: str | Path, *, archive: str | Path | None = None
) -> StatsStore:
    """The `StatsStore` of an event store.

    Args:
        source: a store path, or a ``sqlite:`` / ``jsonl:`` / ``postgresql://`` URL.
        archive: also count the events archived in this directory
            (`tracks.presence.archive`). The store's raw events and the archive's are then
            read into memory without the store's rollups, which already hold the archived
            days and would count them twice.

    Raises:
        FileNotFoundError: the store does not exist.
    """
    if is_postgresql_url(source):
        if archive is None:
            return PostgresStatsStore(str(source))
        return _in_memory(":memory:", read_events(source, archive=archive))
    kind, path = locate(source)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}")
    if kind == "sqlite" and archive is None:
        return SqliteStatsStore(path)
    return _in_memory(path, read_events(source, archive=archive))


def _in_memory(path: str | Path, events: Iterable[Event]) -> SqliteStatsStore:
    """A SQLite store in memory holding ``events`` (named ``path`` in its figures)."""
    connection = schema.connect(":memory:")
    try:
        schema.insert_events(connection, events)
    except BaseException:
        connection.close()
        raise
    return SqliteStatsStore(path, connection=connection)
