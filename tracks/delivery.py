"""`Delivery`: how the engine's writer task carries a batch to the sink, or to the spool.

It writes, retries and spools as `tracks.outage` decides, replays the spool oldest
first, and counts every outcome in the `tracks.ledger`. It is the writer's hands,
not a task of its own: the `Tracker` calls it from its one writer task, so the sink
and the spool are only ever used one call at a time.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from tracks.event import Event
from tracks.ledger import Ledger
from tracks.outage import Outage, classify
from tracks.sinks import Sink
from tracks.spool import UNREADABLE, Spool, SpoolContents

__all__ = ["Delivery"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Delivery:
    """Writes batches to ``sink``, with retries and an optional ``spool`` for outages.

    Args:
        sink: where batches go.
        spool: where batches that ran out of retries wait, or ``None`` to drop them.
        outage: decides what follows a failed write.
        ledger: counts every outcome.
        description: the recorder's, for log lines.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        spool: Spool | None,
        outage: Outage,
        ledger: Ledger,
        description: str,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.outage = outage
        self.ledger = ledger
        self.description = description

    @property
    def spooled(self) -> int:
        """Batches waiting in the spool."""
        return 0 if self.spool is None else self.spool.pending

    async def load(self) -> None:
        """Find what an earlier run left in the spool."""
        if self.spool is not None:
            await self._spool_call(self.spool.load)

    async def send(self, batch: Sequence[Event]) -> None:
        """Write a new batch: after the spooled ones if any, else to the sink with retries.

        Returns once the batch is written, spooled, rejected or counted as dropped.
        """
        if self.outage.route(spooled=self.spooled) == "spool":
            await self.keep(batch)
            return
        outage, ledger = self.outage, self.ledger
        for attempt in itertools.count(1):
            try:
                await self.sink.write(batch)
            except Exception as exc:
                failure = classify(exc)
                step = outage.write_failed(failure, attempt, now=time.monotonic())
                ledger.failed(failure, step, exc, len(batch))
            else:
                ledger.written += len(batch)
                ledger.recovered(outage.recovered())
                return
            if step.action != "retry":
                break
            ledger.retried += len(batch)
            await anyio.sleep(step.delay)
        if step.action == "spool":
            await self.keep(batch)
        elif step.action == "drop":
            ledger.drop_batch(batch, "its retries ran out")

    async def keep(self, batch: Sequence[Event]) -> None:
        """Spool a batch (drop and count it if the spool cannot be written). Needs a spool.

        Shielded from cancellation from its first step, and it returns without another
        checkpoint: once the file is in place, the caller forgets the batch in the same
        breath, so a shutdown deadline cannot spool it twice.
        """
        spool = self.spool
        assert spool is not None  # callers route batches here only when there is one
        with anyio.CancelScope(shield=True):
            discarded = await self._spool_call(spool.append, batch)
        if discarded is None:
            self.ledger.drop_batch(batch, "the spool could not be written")
            return
        self.ledger.spooled += len(batch)
        if discarded.events:
            self.ledger.drop_batch(discarded.events, "the spool is full")
        self.ledger.drop(UNREADABLE, discarded.lost)

    async def replay(self) -> None:
        """Send the oldest spooled batch again; remove it once the sink took it."""
        spool = self.spool
        segment = None if spool is None else spool.oldest()
        if spool is None or segment is None:
            return
        contents = await self._spool_call(spool.read, segment)
        if contents is None:  # the file cannot be read at all (logged): count it, move on
            contents = SpoolContents([], lost=segment.count)
        events = contents.events
        if events:
            try:
                await self.sink.write(events)
            except Exception as exc:
                failure = classify(exc)
                step = self.outage.replay_failed(failure, now=time.monotonic())
                self.ledger.failed(failure, step, exc, len(events))
                if step.action == "keep":
                    self.ledger.retried += len(events)
                    return
            else:
                self.ledger.written += len(events)
                self.ledger.recovered(self.outage.recovered())
        # Counted only now: a batch kept for later is read again and must not count twice.
        self.ledger.drop(UNREADABLE, contents.lost)
        with anyio.CancelScope(shield=True):
            await self._spool_call(spool.remove, segment)

    async def _spool_call(self, function: Callable[..., T], *args: object) -> T | None:
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except OSError as exc:
            directory = None if self.spool is None else self.spool.directory
            logger.error("%s: spool %s failed: %s", self.description, directory, exc)
            return None
