"""`JsonlSink`: appends one JSON object per line to a file or to stdout.

Each line is exactly ``{"event_id", "name", "ts", "props"}``. A batch goes out
in one write followed by a flush, so `tail -f` sees whole lines, batch by batch.
File I/O runs in a worker thread, never on the event loop. A batch holding a string
UTF-8 cannot encode (a lone surrogate) fails whole with ``UnicodeEncodeError``, before
anything is written: the engine reads it as bad data and splits the batch; an
``OSError`` (a full disk) is retried and spooled like any outage.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio.to_thread

from tracks.event import Event, json_text

__all__ = ["JsonlSink"]


class JsonlSink:
    """Appends events as JSON lines.

    Args:
        path: the file to append to (created with its parent directory), or ``"-"``
            for standard output.
    """

    def __init__(self, path: str | Path) -> None:
        self._stdout = str(path) == "-"
        self.path = None if self._stdout else Path(path).absolute()
        self.description = "jsonl:-" if self.path is None else f"jsonl://{self.path}"
        self._file: TextIO | None = None

    async def write(self, batch: Sequence[Event]) -> None:
        text = "".join(json_text(event.to_json()) + "\n" for event in batch)
        await anyio.to_thread.run_sync(self._write, text)

    def _write(self, text: str) -> None:
        if self._file is None:
            if self.path is None:
                self._file = sys.stdout
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
        self._file.write(text)
        self._file.flush()

    async def aclose(self) -> None:
        file, self._file = self._file, None
        if file is not None and self.path is not None:
            await anyio.to_thread.run_sync(file.close)
