"""Where rooms' Yjs documents are stored: the `Documents` interface and `open_documents(url)`.

Two stores implement it: SQLite (`sqlite:///path`, the embedded default for one server) and
PostgreSQL (`postgresql://…`, shared by several nodes). Both queue updates in memory and
write them in batches, retried until they land.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self
from urllib.parse import unquote, urlsplit

from rtc.documents.batching import DocumentStats, StoreUnavailableError, retry_delay
from rtc.documents.sqlite import SqliteDocuments
from rtc.ids import RoomKey

__all__ = [
    "DocumentStats",
    "Documents",
    "SqliteDocuments",
    "StoreUnavailableError",
    "open_documents",
    "retry_delay",
]


class Documents(Protocol):
    """A store of rooms' updates. Use as `async with store:`; `aclose()` writes what is queued."""

    compact_after: int

    @property
    def stats(self) -> DocumentStats:
        """Counters for /metrics."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def aclose(self) -> None:
        """Write everything queued (retrying for a while), then close."""
        ...

    def append(self, key: RoomKey, update: bytes) -> None:
        """Queue an update already applied in memory; never blocks, never raises."""
        ...

    async def load(self, key: RoomKey) -> list[bytes]:
        """Every stored update of a room, queued ones included."""
        ...

    def wants_compaction(self, key: RoomKey) -> bool:
        """Whether the room's rows have piled up enough to be worth compacting."""
        ...

    async def compact(self, key: RoomKey, state_of: Callable[[], bytes]) -> None:
        """Replace the room's rows by one update; `state_of()` gives the room's whole state."""
        ...

    def forget(self, key: RoomKey) -> None:
        """The room was unloaded: drop what is kept about it."""
        ...

    async def flush(self) -> None:
        """Write everything queued so far; raises if the database cannot take it now."""
        ...


def open_documents(url: str, *, flush_interval: float = 0.1) -> Documents:
    """The store a URL names; enter it with `async with`.

    Args:
        url: ``sqlite:///abs/path.sqlite`` (also ``sqlite://relative.sqlite``) or
            ``postgresql://user@host:port/db[?schema=NAME]`` (or ``postgres://``).
        flush_interval: seconds a batch of updates may wait before it is written.

    Raises:
        ValueError: an unknown scheme or a URL without a path.
    """
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = unquote(url[len("sqlite://"):])
        if not path:
            raise ValueError(f"no file in {url!r}: use sqlite:///abs/path.sqlite")
        return SqliteDocuments(Path(path), flush_interval=flush_interval)
    if scheme in ("postgresql", "postgres"):
        # Imported here: psycopg is an optional extra (rtc-presence[postgresql]).
        from rtc.documents.postgresql import PostgresDocuments

        return PostgresDocuments(url, flush_interval=flush_interval)
    raise ValueError(f"unknown documents URL {url!r}: use sqlite:///path or postgresql://…")
