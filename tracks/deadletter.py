"""`DeadLetters`: a bounded JSON-lines file of the events a sink could not write. Blocking file I/O.

When a sink fails on the data of one event (an id too large for SQLite's INTEGER, a
string UTF-8 cannot encode, an HTTP 400 for that event), the engine splits the batch,
writes the rest, and sets that event aside here. One event per line, in the JSONL
store's format (``{"event_id", "name", "ts", "props"}``), so an operator can read the
file with the usual tools, fix what is wrong and record the events again.

Lines are ASCII (``ensure_ascii``): the event at fault may hold a lone surrogate
that UTF-8 cannot encode, and its line must still be written whole and read back
the same. The file is bounded: once it holds ``max_bytes``, further events are not
written, and the engine counts them as dropped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tracks.event import Event

__all__ = ["DEFAULT_MAX_BYTES", "FILE_NAME", "DeadLetters"]

FILE_NAME = "dead-letter.jsonl"
"""The file's name inside a spool directory (the spool ignores it: it is no batch)."""

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""How large the file may grow before further events set aside are dropped, counted."""


class DeadLetters:
    """Appends events to ``path``, one JSON line each, up to ``max_bytes``.

    Args:
        path: the file; created, with its directory, on the first append.
        max_bytes: the bound on the file's size.

    Raises:
        ValueError: ``max_bytes`` is not positive.
    """

    def __init__(self, path: str | Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
        self.path = Path(path).absolute()
        self.max_bytes = max_bytes

    def append(self, events: Sequence[Event]) -> bool:
        """Append ``events``, fsynced; ``False`` (nothing written) when they do not fit.

        Raises:
            OSError: the file could not be written.
        """
        data = "".join(
            json.dumps(event.to_json(), separators=(",", ":"), allow_nan=False) + "\n"
            for event in events
        ).encode("ascii")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as file:
            if os.fstat(file.fileno()).st_size + len(data) > self.max_bytes:
                return False
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return True

    def read(self) -> list[Event]:
        """The events in the file, oldest first (for tools and tests); skips broken lines.

        Raises:
            OSError: the file cannot be read.
        """
        if not self.path.exists():
            return []
        events = []
        for line in self.path.read_bytes().splitlines():
            try:
                events.append(Event.from_json(json.loads(line)))
            except ValueError:  # a line cut short by a crash: the rest still counts
                continue
        return events
