"""Sinks: where a batch of events is written. One file per sink; each only writes a batch.

A sink knows nothing about queues, batching, retries or spooling: the shared
engine in `tracks.tracker` does that for every sink alike. A sink reports
"try again later" by raising `TransientError` and "never send this again" by
raising `RejectedError`; anything else it raises is retried like a transient
error but logged with its traceback (`tracks.outage.classify` is the one place
that reads these).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tracks.event import Event

__all__ = ["RejectedError", "Sink", "SinkError", "TransientError"]


class SinkError(Exception):
    """A sink could not write a batch."""


class TransientError(SinkError):
    """The write may succeed later (connection refused, timeout, 5xx, 429, database locked).

    Args:
        message: what went wrong, without event contents.
        retry_after: the backend's requested delay in seconds, if it sent one.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RejectedError(SinkError):
    """The backend refused the batch for good (e.g. HTTP 400); retrying cannot help."""


@runtime_checkable
class Sink(Protocol):
    """Writes batches. Called by one task at a time, never concurrently."""

    description: str

    async def write(self, batch: Sequence[Event]) -> None:
        """Write the whole batch, or raise `TransientError` / `RejectedError`."""

    async def aclose(self) -> None:
        """Release files, connections and clients. Idempotent."""
