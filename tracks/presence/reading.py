"""Reading stored events back: `read_events()` and `follow()`, SQLite or JSONL. Blocking I/O.

``postgresql://`` sources are read by `tracks.presence.postgresql_reading`.

Whole-store reads for the CLI (``tracks tail``, a report over a JSONL store or an
archive), tests and offline tools. The server reads events too, but through narrower
queries in a worker thread: a session's timeline (`tracks.presence.timeline`) and the
presence figures (`tracks.presence.sqlite`); `locate()` tells it which kind of store a
recorder URL names.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from tracks.event import Event, EventError
from tracks.presence import sqlite_schema as schema
from tracks.presence.archive import read_archive
from tracks.presence.postgresql_reading import (
    follow_postgresql,
    is_postgresql_url,
    read_postgresql,
)
from tracks.urls import parse_store_url

__all__ = ["follow", "locate", "read_events", "store_exists"]

logger = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_SUFFIXES = frozenset({".sqlite", ".sqlite3", ".db"})


def locate(source: str | Path) -> tuple[Literal["sqlite", "jsonl"], Path]:
    """Which kind of store ``source`` is (a ``sqlite:``/``jsonl:`` URL or a path), and its path.

    A bare path is a SQLite store if its suffix says so or its first bytes are
    SQLite's magic header, else a JSONL store.

    Raises:
        ValueError: a malformed URL, ``jsonl:-``, or a ``postgresql://`` URL (no path:
            `read_events` and `follow` read those).
    """
    if is_postgresql_url(source):
        raise ValueError(f"{source}: a PostgreSQL store has no file; this needs a SQLite store")
    if isinstance(source, str) and source.startswith(("sqlite:", "jsonl:")):
        kind, path = parse_store_url(source)
        if path == "-":
            raise ValueError("cannot read events back from stdout (jsonl:-)")
        return kind, path
    path = Path(source)
    if path.suffix in SQLITE_SUFFIXES:
        return "sqlite", path
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        head = b""
    return ("sqlite" if head == SQLITE_MAGIC else "jsonl"), path


def store_exists(source: str | Path) -> bool:
    """Whether there is an event store to read at ``source``: its file exists (a SQLite or
    JSONL store), or it is a ``postgresql://`` URL (whose database a query will find, or
    fail to reach)."""
    if is_postgresql_url(source):
        return True
    try:
        return locate(source)[1].exists()
    except ValueError:
        return False


def read_events(source: str | Path, *, archive: str | Path | None = None) -> Iterator[Event]:
    """Every event in a SQLite, PostgreSQL or JSONL store, ordered by ``ts`` (ties in stored
    order).

    Args:
        source: a path, or a ``sqlite:…`` / ``jsonl:…`` / ``postgresql://…`` URL as
            `open_recorder` takes.
        archive: also the events archived there by ``tracks archive`` (`tracks.presence.archive`);
            an event in both (an interrupted archive run) comes once.

    Raises:
        FileNotFoundError: the store does not exist.
        SchemaError: a PostgreSQL database without an event store
            (`tracks.presence.postgresql_schema.SchemaError`).
    """
    if is_postgresql_url(source):
        assert isinstance(source, str)  # is_postgresql_url says so
        if archive is None:
            return read_postgresql(source)
        return _with_archive(read_postgresql(source), archive)
    kind, path = locate(source)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}")
    if kind == "sqlite" and archive is None:
        return _read_sqlite(path, after_id=None)
    stored = _read_sqlite(path, after_id=None) if kind == "sqlite" else _read_jsonl_events(path)
    return _with_archive(stored, archive)


def _with_archive(stored: Iterator[Event], archive: str | Path | None) -> Iterator[Event]:
    archived = [] if archive is None else list(read_archive(archive))
    seen = {event.event_id for event in archived}
    events = archived + [event for event in stored if event.event_id not in seen]
    events.sort(key=lambda event: event.ts)
    return iter(events)


def _read_jsonl_events(path: Path) -> Iterator[Event]:
    return (event for _, event in _read_jsonl(path, 0)[0])


def _read_sqlite(path: Path, *, after_id: int | None) -> Iterator[Event]:
    connection = schema.connect(path, readonly=True)
    try:
        if after_id is None:
            cursor = connection.execute(f"SELECT {schema.SELECT_EVENT} FROM events ORDER BY ts, id")
        else:
            cursor = connection.execute(
                f"SELECT {schema.SELECT_EVENT} FROM events WHERE id > ? ORDER BY id",
                (after_id,),
            )
        for row in cursor:
            yield schema.event_from_row(*row)
    finally:
        connection.close()


def _read_jsonl(path: Path, offset: int) -> tuple[list[tuple[int, Event]], int]:
    """Complete lines from ``offset`` on, as (line end offset, event); and where to resume."""
    events: list[tuple[int, Event]] = []
    with path.open("rb") as file:
        file.seek(offset)
        for line in file:
            if not line.endswith(b"\n"):
                break  # a line still being written; the next read gets it whole
            offset += len(line)
            if not line.strip():
                continue
            try:
                events.append((offset, Event.from_json(json.loads(line))))
            except (ValueError, EventError) as exc:
                logger.warning(
                    "%s: skipped an unreadable line ending at byte %d: %s", path, offset, exc
                )
    return events, offset


def follow(
    source: str | Path, *, last: int = 10, poll_interval: float = 0.5, forever: bool = True
) -> Iterator[Event]:
    """The last ``last`` events of a store, then each new one as it is stored (like ``tail -f``).

    New events come in storage order. With ``forever=False`` it stops at the end.
    """
    if is_postgresql_url(source):
        assert isinstance(source, str)  # is_postgresql_url says so
        yield from follow_postgresql(
            source, last=last, poll_interval=poll_interval, forever=forever
        )
        return
    kind, path = locate(source)
    while not path.exists():
        if not forever:
            return
        time.sleep(poll_interval)
    if kind == "sqlite":
        yield from _follow_sqlite(path, last=last, poll_interval=poll_interval, forever=forever)
    else:
        yield from _follow_jsonl(path, last=last, poll_interval=poll_interval, forever=forever)


def _follow_sqlite(
    path: Path, *, last: int, poll_interval: float, forever: bool
) -> Iterator[Event]:
    connection = schema.connect(path, readonly=True)
    try:
        row = connection.execute("SELECT MAX(id) FROM events").fetchone()
        newest = row[0] or 0
        rows = connection.execute(
            f"SELECT id, {schema.SELECT_EVENT} FROM events WHERE id > ? ORDER BY id",
            (max(newest - last, 0),),
        ).fetchall()
        while True:
            for event_row_id, *rest in rows:
                newest = max(newest, event_row_id)
                yield schema.event_from_row(*rest)
            if not forever:
                return
            time.sleep(poll_interval)
            rows = connection.execute(
                f"SELECT id, {schema.SELECT_EVENT} FROM events WHERE id > ? ORDER BY id",
                (newest,),
            ).fetchall()
    finally:
        connection.close()


def _follow_jsonl(path: Path, *, last: int, poll_interval: float, forever: bool) -> Iterator[Event]:
    events, offset = _read_jsonl(path, 0)
    for _, event in events[-last:] if last > 0 else []:
        yield event
    while forever:
        time.sleep(poll_interval)
        if path.stat().st_size < offset:
            offset = 0  # truncated or replaced: start over
        events, offset = _read_jsonl(path, offset)
        for _, event in events:
            yield event
