"""Archives of old raw events: day-partitioned, gzip-compressed JSONL. Blocking file I/O.

Format (one directory, any number of runs)::

    DIR/YYYY/MM/YYYY-MM-DD.jsonl.gz

One file per UTC day (by the event's ``ts``), a plain gzip stream (``zcat`` reads it) of
UTF-8 lines, each exactly the JSONL event format: ``{"event_id", "name", "ts", "props"}``
as `JsonlRecorder` writes it. Within a file an ``event_id`` appears once; lines are in
``ts`` order within one run's part, and a later run that adds to a day appends its events
after the ones already there. Nothing else lives in the directory (temporary files start
with ``.`` and are removed or replaced).

`archive_store` moves the events older than a cutoff out of a SQLite store: for each day
it merges them with that day's file (dropping ``event_id``\\ s already there), writes a
temporary file, fsyncs it, reads it back and checks every expected ``event_id`` is there
exactly once, renames it into place (fsyncing the directory), and only then deletes those
rows from the store, one day per transaction. A crash at any point leaves each event in
the store, the archive, or both; re-running finishes the job without duplicates, and
readers (`read_archive`, ``read_events(..., archive=DIR)``) count an event in both once.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from tracks.event import Event, EventError, json_text
from tracks.presence import sqlite_schema as schema

__all__ = [
    "ArchiveError",
    "ArchiveResult",
    "archive_store",
    "day_of",
    "day_path",
    "read_archive",
    "write_day",
]

logger = logging.getLogger(__name__)

DAY_MS = 86_400_000
_DAY_FILE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.jsonl\.gz$")
_EPOCH = date(1970, 1, 1)


class ArchiveError(RuntimeError):
    """An archive file could not be written or did not read back as written."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveResult:
    """What one `archive_store` run did."""

    days: tuple[date, ...]
    """The UTC days written (created or added to)."""
    archived: int
    """Events written that the archive did not hold yet."""
    deleted: int
    """Rows deleted from the store (archived now or by an earlier, interrupted run)."""


def day_of(ts_ms: int) -> date:
    """The UTC day of a timestamp in ms."""
    return _EPOCH + timedelta(days=ts_ms // DAY_MS)


def day_path(directory: str | Path, day: date) -> Path:
    """``directory/YYYY/MM/YYYY-MM-DD.jsonl.gz``."""
    return Path(directory) / f"{day:%Y}" / f"{day:%m}" / f"{day.isoformat()}.jsonl.gz"


def _day_start_ms(day: date) -> int:
    return (day - _EPOCH).days * DAY_MS


def _day_files(directory: Path) -> list[tuple[date, Path]]:
    files = []
    for path in directory.glob("[0-9][0-9][0-9][0-9]/[0-9][0-9]/*.jsonl.gz"):
        match = _DAY_FILE.match(path.name)
        if match:
            files.append((date(int(match[1]), int(match[2]), int(match[3])), path))
    return sorted(files)


def _read_day(path: Path) -> Iterator[Event]:
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                yield Event.from_json(json.loads(line))
            except (ValueError, EventError) as exc:
                raise ArchiveError(f"{path}:{number}: not an event: {exc}") from exc


def read_archive(
    directory: str | Path, *, since_ms: int | None = None, until_ms: int | None = None
) -> Iterator[Event]:
    """Every archived event, day by day (within a day, in file order), each ``event_id`` once.

    Args:
        directory: the archive's root (``DIR`` above). A missing directory holds nothing.
        since_ms: only events with ``ts >= since_ms``; whole days before it are not opened.
        until_ms: only events with ``ts < until_ms``.

    Raises:
        ArchiveError: a file holds a line that is not an event.
    """
    for day, path in _day_files(Path(directory)):
        start = _day_start_ms(day)
        if (since_ms is not None and start + DAY_MS <= since_ms) or (
            until_ms is not None and start >= until_ms
        ):
            continue
        seen: set[str] = set()
        for event in _read_day(path):
            if event.event_id in seen:
                continue
            seen.add(event.event_id)
            if (since_ms is None or event.ts >= since_ms) and (
                until_ms is None or event.ts < until_ms
            ):
                yield event


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_day(directory: str | Path, day: date, events: Iterable[Event]) -> int:
    """Merge ``events`` into ``day``'s file: write, fsync, verify, rename. Return how many were new.

    Raises:
        ArchiveError: the file did not read back with every expected event exactly once.
        ValueError: an event is not of ``day``.
    """
    path = day_path(directory, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    start, end = _day_start_ms(day), _day_start_ms(day) + DAY_MS
    expected: set[str] = set()
    added = 0
    try:
        with temporary.open("wb") as raw:
            # mtime=0: the same events give the same bytes, whenever they are archived.
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as file:
                if path.exists():
                    for event in _read_day(path):
                        if event.event_id not in expected:
                            expected.add(event.event_id)
                            file.write((json_text(event.to_json()) + "\n").encode())
                for event in events:
                    if not start <= event.ts < end:
                        raise ValueError(f"event ts {event.ts} is not on {day}")
                    if event.event_id in expected:
                        continue
                    expected.add(event.event_id)
                    added += 1
                    file.write((json_text(event.to_json()) + "\n").encode())
            raw.flush()
            os.fsync(raw.fileno())
        # Read back what is on disk (gzip checks its CRC at the end) before trusting it.
        found: set[str] = set()
        for event in _read_day(temporary):
            if event.event_id in found:
                raise ArchiveError(f"{temporary}: {event.event_id} written twice")
            found.add(event.event_id)
        if found != expected:
            raise ArchiveError(
                f"{temporary}: read back {len(found)} events, expected {len(expected)}"
            )
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return added


def archive_store(
    source: str | Path, directory: str | Path, *, before_ms: int, upto_id: int | None = None
) -> ArchiveResult:
    """Move a SQLite store's events with ``ts < before_ms`` into the archive at ``directory``.

    Each UTC day is written and verified (`write_day`) before its rows are deleted, so
    an interrupted run loses nothing and a re-run duplicates nothing. Rows stored while
    it runs are left for the next run.

    Args:
        source: the SQLite store's path (`tracks.presence.reading.locate` resolves URLs).
        directory: the archive's root; created if missing.
        before_ms: the cutoff, in ms since the epoch.
        upto_id: leave rows with a larger row id (e.g. those the stats rollups have not
            folded in yet: `tracks archive` passes the rollups' ``last_id``).
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"no event store at {path}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    connection = schema.connect(path)
    try:
        row = connection.execute("SELECT MAX(id) FROM events WHERE ts < ?", (before_ms,))
        newest = row.fetchone()[0]
        if newest is not None and upto_id is not None:
            newest = min(newest, upto_id)
        if newest is None or newest <= 0:
            return ArchiveResult(days=(), archived=0, deleted=0)
        days: list[date] = []
        archived = deleted = 0
        for day in _days_before(connection, before_ms, newest):
            start = _day_start_ms(day)
            end = min(start + DAY_MS, before_ms)
            archived += write_day(root, day, _events_between(connection, start, end, newest))
            deleted += schema.delete_events(
                connection, since_ms=start, until_ms=end, upto_id=newest
            )
            days.append(day)
            logger.info("archived %s to %s", day, day_path(root, day))
        return ArchiveResult(days=tuple(days), archived=archived, deleted=deleted)
    finally:
        connection.close()


def _days_before(connection: sqlite3.Connection, before_ms: int, upto_id: int) -> list[date]:
    rows = connection.execute(
        "SELECT DISTINCT ts / ? FROM events WHERE ts < ? AND id <= ? ORDER BY 1",
        (DAY_MS, before_ms, upto_id),
    )
    return [_EPOCH + timedelta(days=day) for (day,) in rows]


def _events_between(
    connection: sqlite3.Connection, start: int, end: int, upto_id: int
) -> Iterator[Event]:
    rows = connection.execute(
        f"SELECT {schema.SELECT_EVENT} FROM events WHERE ts >= ? AND ts < ? AND id <= ?"
        " ORDER BY ts, id",
        (start, end, upto_id),
    )
    for row in rows:
        yield schema.event_from_row(*row)
