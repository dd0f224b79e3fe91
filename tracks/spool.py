"""`Spool`: a bounded directory of batches kept on disk while a backend is down. Blocking file I/O.

One file per batch, named ``<sequence>-<count>.jsonl`` and holding the events as
JSON lines (the JSONL store's format). A file is written under a temporary name,
fsynced, then renamed, so a crash never leaves half a batch behind. Batches are
re-sent oldest first (by sequence) and deleted once the backend confirms them;
a crash between the two re-sends one batch, which the event ids de-duplicate.

The engine calls these methods from a worker thread, one call at a time. What
cannot be read back (a corrupted or truncated file) is logged and reported as
`SpoolContents.lost`, so the engine counts it as dropped instead of losing it
silently.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tracks.event import Event, json_text

__all__ = ["UNREADABLE", "Spool", "SpoolContents", "SpoolSegment"]

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"

UNREADABLE = "<unreadable spool>"
"""The event name under which events lost to an unreadable spool file are counted."""


@dataclass(frozen=True, slots=True)
class SpoolSegment:
    """One spooled batch on disk."""

    path: Path
    sequence: int
    count: int
    size: int


@dataclass(frozen=True, slots=True)
class SpoolContents:
    """Events read back from the spool.

    Attributes:
        events: the events that could be read, in order.
        lost: events that could not be (their names are unknown: count them
            under `UNREADABLE`).
    """

    events: list[Event]
    lost: int = 0


class Spool:
    """Batches waiting on disk for the backend to come back.

    Args:
        directory: where the batch files live; created if missing.
        max_bytes: once the spool is larger, its oldest batches are discarded.
    """

    def __init__(self, directory: str | Path, *, max_bytes: int = 256 * 1024 * 1024) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.directory = Path(directory).absolute()
        self.max_bytes = max_bytes
        self._segments: list[SpoolSegment] = []
        self._loaded = False
        self._next_sequence = 0

    @property
    def pending(self) -> int:
        """Batches waiting (as of the last call; `load()` first)."""
        return len(self._segments)

    @property
    def size(self) -> int:
        return sum(segment.size for segment in self._segments)

    def load(self) -> int:
        """Find batches left by an earlier run; return how many events they hold."""
        if self._loaded:
            return sum(segment.count for segment in self._segments)
        self.directory.mkdir(parents=True, exist_ok=True)
        segments = []
        for path in self.directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # an append interrupted before its rename
                continue
            segment = _parse_name(path)
            if segment is not None:
                segments.append(segment)
        segments.sort(key=lambda segment: segment.sequence)
        self._segments = segments
        self._next_sequence = segments[-1].sequence + 1 if segments else 0
        self._loaded = True
        return sum(segment.count for segment in segments)

    def append(self, batch: Sequence[Event]) -> SpoolContents:
        """Store a batch; return what older batches were discarded to stay in bounds.

        Raises:
            OSError: the batch could not be written (nothing was stored).
        """
        self.load()
        sequence = self._next_sequence
        self._next_sequence += 1
        self._segments.append(self._write(sequence, batch))
        discarded: list[Event] = []
        lost = 0
        while self.size > self.max_bytes and len(self._segments) > 1:
            oldest = self._segments[0]
            try:
                contents = self.read(oldest)
            except OSError as exc:
                # The new batch is stored already: losing an old one must not undo that.
                logger.error("spool %s unreadable, discarded: %s", oldest.path, exc)
                contents = SpoolContents([], oldest.count)
            discarded.extend(contents.events)
            lost += contents.lost
            try:
                self.remove(oldest)
            except OSError as exc:
                logger.error("spool %s could not be deleted: %s", oldest.path, exc)
        return SpoolContents(discarded, lost)

    def replace(self, segment: SpoolSegment, events: Sequence[Event]) -> SpoolSegment:
        """Put ``events`` (what is left of a batch) in the place of ``segment``.

        The new file keeps the old one's sequence, so it is still replayed first; it is
        in place before the old one goes, so a crash between the two re-sends events
        (which their ids de-duplicate) rather than losing them.

        Raises:
            OSError: the new file could not be written (the old one stays).
        """
        replacement = self._write(segment.sequence, events)
        if replacement.path != segment.path:
            segment.path.unlink(missing_ok=True)
        self._segments = [replacement if s == segment else s for s in self._segments]
        return replacement

    def _write(self, sequence: int, batch: Sequence[Event]) -> SpoolSegment:
        path = self.directory / f"{sequence:012d}-{len(batch)}{SUFFIX}"
        data = b"".join(_line(event) for event in batch)
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        temporary.replace(path)
        return SpoolSegment(path, sequence, len(batch), len(data))

    def oldest(self) -> SpoolSegment | None:
        self.load()
        return self._segments[0] if self._segments else None

    def read(self, segment: SpoolSegment) -> SpoolContents:
        """The events of a batch. Lines that no longer parse are skipped, logged and counted
        in `SpoolContents.lost`, as are events the file name promises but the file lacks.

        Raises:
            OSError: the file cannot be read at all.
        """
        events = []
        unreadable = 0
        # Bytes, not text: a corrupted file may not even be UTF-8, and one bad line must
        # not cost the others (UnicodeDecodeError is a ValueError, caught per line).
        for number, line in enumerate(segment.path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                events.append(Event.from_json(json.loads(line)))
            except ValueError as exc:  # EventError, JSONDecodeError, UnicodeDecodeError
                unreadable += 1
                logger.error("spool %s line %d unreadable, skipped: %s", segment.path, number, exc)
        return SpoolContents(events, max(segment.count - len(events), unreadable))

    def remove(self, segment: SpoolSegment) -> None:
        """Forget a batch and delete its file.

        Raises:
            OSError: the file could not be deleted; the batch is forgotten all the same
                (re-sending it forever would be worse), and the next run re-sends it.
        """
        if segment in self._segments:
            self._segments.remove(segment)
        segment.path.unlink(missing_ok=True)


def _line(event: Event) -> bytes:
    """One event's line. An event UTF-8 cannot encode (a lone surrogate) is escaped to
    ASCII instead: it must be kept, and read back the same, to be set aside later."""
    text = json_text(event.to_json()) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError:
        return (json.dumps(event.to_json(), separators=(",", ":")) + "\n").encode("ascii")


def _parse_name(path: Path) -> SpoolSegment | None:
    if not path.name.endswith(SUFFIX):
        return None
    sequence, _, count = path.name[: -len(SUFFIX)].partition("-")
    if not (sequence.isdigit() and count.isdigit()):
        return None
    return SpoolSegment(path, int(sequence), int(count), path.stat().st_size)
