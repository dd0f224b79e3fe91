"""The `Recorder` protocol (the front door a server sees) and its `RecorderStats`. No I/O here."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from tracks.event import Event

__all__ = ["Recorder", "RecorderStats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecorderStats:
    """A snapshot of a recorder's counters. All counts are events, not batches.

    Attributes:
        accepted: events taken in by `record()`.
        written: events the sink confirmed (including ones re-sent from the spool).
        dropped: events lost: queue overflow, retries exhausted without a spool,
            spool overflow, or `record()` after close.
        retried: event deliveries attempted again after a transient failure.
        spooled: events written to the spool file during an outage.
        rejected: events the backend refused for good (e.g. HTTP 401), and events
            set aside with no dead-letter file to keep them; never retried.
        dead_lettered: events a sink could not write because of their own data (an
            id beyond SQLite's INTEGER, an HTTP 400 for that event), found by
            splitting their batch and kept in the dead-letter file; their batch's
            other events were written.
        queue_depth: events waiting in the inbox right now.
        dropped_by_name: `dropped`, broken down by event name.
    """

    accepted: int = 0
    written: int = 0
    dropped: int = 0
    retried: int = 0
    spooled: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    queue_depth: int = 0
    dropped_by_name: dict[str, int] = field(default_factory=dict)

    def __add__(self, other: RecorderStats) -> RecorderStats:
        by_name = dict(self.dropped_by_name)
        for name, count in other.dropped_by_name.items():
            by_name[name] = by_name.get(name, 0) + count
        return RecorderStats(
            accepted=self.accepted + other.accepted,
            written=self.written + other.written,
            dropped=self.dropped + other.dropped,
            retried=self.retried + other.retried,
            spooled=self.spooled + other.spooled,
            rejected=self.rejected + other.rejected,
            dead_lettered=self.dead_lettered + other.dead_lettered,
            queue_depth=self.queue_depth + other.queue_depth,
            dropped_by_name=by_name,
        )


@runtime_checkable
class Recorder(Protocol):
    """Where events go. `record()` never blocks and never raises; the rest is lifecycle.

    One lifecycle: ``async with recorder:``. Entering starts any background work;
    leaving flushes what was accepted (within the shutdown deadline) and stops.

    - `record()` may be called at any time. Before entering, events wait in the
      bounded queue (the overflow policy applies) until the recorder is entered;
      once it is closing or closed, they are dropped and counted in
      ``stats.dropped_by_name``.
    - `flush()` and `aclose()` belong inside the block. A recorder with background
      work (`Tracker` and the recorders built on it, `FanoutRecorder`) raises
      `RuntimeError` when they are called before entering; `MemoryRecorder` and
      `NullRecorder` have none, so entering them is optional.
    """

    description: str
    """Human-readable destination, e.g. ``sqlite:///srv/events.sqlite``."""

    def record(self, event: Event) -> None:
        """Queue an event. Never blocks, never raises; a full queue drops by policy and counts."""

    async def flush(self) -> None:
        """Return once every event accepted so far is written, spooled or counted as lost."""

    async def aclose(self) -> None:
        """Flush everything accepted (within the shutdown deadline), then stop. Idempotent.

        Leaving ``async with`` calls it; call it inside the block to close early.
        """

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
