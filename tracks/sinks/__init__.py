"""Sinks: where a batch of events is written. One file per sink; each only writes a batch.

A sink knows nothing about queues, batching, retries or spooling: the shared
engine in `tracks.tracker` does that for every sink alike. A sink reports
"try again later" by raising `TransientError`, "never send this again" by
raising `RejectedError`, and "some event in this batch cannot be written" by
raising `UnwritableError` (the engine then splits the batch to find it). Errors
it does not translate are read by `tracks.outage.classify`, the one place that
maps an exception to what the engine does: one that is about the data
(``OverflowError``, ``UnicodeError``, SQLite's ``IntegrityError``...) splits the
batch too; anything else is retried like a transient error but logged with its
traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tracks.event import Event

__all__ = ["RejectedError", "Sink", "SinkError", "TransientError", "UnwritableError"]


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
    """The backend refused the batch for good (e.g. HTTP 401); retrying cannot help."""


class UnwritableError(RejectedError):
    """Something in the batch cannot be written (e.g. HTTP 400 or 422): the same batch
    would fail the same way, but the fault may lie with one of its events.

    The engine splits the batch until it finds the events at fault, sets them aside
    (a dead-letter file) and writes the rest. A `RejectedError`, so code that already
    treats it as "refused for good" stays right about the whole batch.
    """


@runtime_checkable
class Sink(Protocol):
    """Writes batches. Called by one task at a time, never concurrently."""

    description: str

    async def write(self, batch: Sequence[Event]) -> None:
        """Write the whole batch, or raise `TransientError`, `RejectedError` or `UnwritableError`.

        A failed batch may be written again, whole or in parts: event ids let the
        backend de-duplicate what it had already taken.
        """

    async def aclose(self) -> None:
        """Release files, connections and clients. Idempotent."""
