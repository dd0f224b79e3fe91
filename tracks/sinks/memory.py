"""`MemorySink`: keeps written batches in a list. The fake beside the `Sink` protocol."""

from __future__ import annotations

from collections.abc import Sequence

from tracks.event import Event

__all__ = ["MemorySink"]


class MemorySink:
    """Appends every written event to `events`, in order."""

    description = "memory:"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches = 0

    async def write(self, batch: Sequence[Event]) -> None:
        self.events.extend(batch)
        self.batches += 1

    async def aclose(self) -> None:
        pass
