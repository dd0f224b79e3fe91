"""`Delivery`: how the engine's writer task carries a batch to the sink, or to the spool.

It writes, retries and spools as `tracks.outage` decides, replays the spool oldest
first, and counts every outcome in the `tracks.ledger`. It is the writer's hands,
not a task of its own: the `Tracker` calls it from its one writer task, so the sink
and the spool are only ever used one call at a time.

A batch that fails on the data of some event is split in halves, and each failing
half again, until the events at fault stand alone: those are set aside (in the
`tracks.deadletter` file), everything else is written. One bad event in a batch of
n costs about 2·log2(n) extra writes. Past `SPLIT_SET_ASIDE_LIMIT` events set aside
from one batch, a piece that still fails is set aside whole instead of split further:
a batch that bad is refused for a reason that is not one event (an endpoint that
answers 400 to everything), and bisecting it to the end would cost two writes per
event. Set aside is not dropped: the events are kept and counted.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.to_thread

from tracks.deadletter import DeadLetters
from tracks.event import Event
from tracks.ledger import Ledger
from tracks.outage import Failure, Outage, classify
from tracks.sinks import Sink
from tracks.spool import UNREADABLE, Spool, SpoolContents

__all__ = ["SPLIT_SET_ASIDE_LIMIT", "Delivery"]

SPLIT_SET_ASIDE_LIMIT = 16
"""Events set aside one by one from a batch before failing pieces are set aside whole."""

Rest = tuple[list[Event], Failure, Exception]
"""What a split could not write, after a failure that was not about the data."""

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Delivery:
    """Writes batches to ``sink``, with retries and an optional ``spool`` for outages.

    Args:
        sink: where batches go.
        spool: where batches that ran out of retries wait, or ``None`` to drop them.
        dead_letters: where events the sink cannot write are set aside, or ``None``
            (they are counted as rejected).
        outage: decides what follows a failed write.
        ledger: counts every outcome.
        description: the recorder's, for log lines.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        spool: Spool | None,
        dead_letters: DeadLetters | None = None,
        outage: Outage,
        ledger: Ledger,
        description: str,
    ) -> None:
        self.sink = sink
        self.spool = spool
        self.dead_letters = dead_letters
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

        Returns once the batch is written, spooled, rejected, set aside or counted as
        dropped (a batch split for bad data: each of its events, one of these).
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
                if step.action == "split":
                    rest = await self.split(batch, exc)
                    if rest is None:
                        return
                    # The backend failed another way mid-split: the rest goes on as the batch.
                    batch, failure, exc = rest
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

    async def split(
        self, batch: Sequence[Event], error: Exception, *, stubborn: bool = False
    ) -> Rest | None:
        """Write what the sink takes of a batch that failed with ``error``, by halves, and set
        aside the events it cannot take. ``stubborn``: unexpected errors count as data ones.

        Returns ``None`` once every event is written or set aside; or, when a piece fails
        for another reason (the backend went down meanwhile), the events not written yet,
        in order, with that failure.
        """
        ledger, outage = self.ledger, self.outage
        set_aside = 0
        pieces = [batch]  # a stack: the next piece to write is the last
        while pieces:
            piece = pieces.pop()
            if piece is not batch:  # the whole batch has just failed with ``error``
                try:
                    await self.sink.write(piece)
                except Exception as exc:
                    error = exc
                else:
                    ledger.written += len(piece)
                    ledger.recovered(outage.recovered())
                    continue
            failure = classify(error)
            if not (failure.kind == "data" or (stubborn and failure.kind == "unexpected")):
                rest = [*piece, *(event for later in reversed(pieces) for event in later)]
                return rest, failure, error
            if len(piece) == 1 or set_aside >= SPLIT_SET_ASIDE_LIMIT:
                await self._set_aside(piece, error)
                set_aside += len(piece)
            else:
                middle = len(piece) // 2
                pieces += [piece[middle:], piece[:middle]]
        return None

    async def _set_aside(self, events: Sequence[Event], error: Exception) -> None:
        letters = self.dead_letters
        if letters is None:
            self.ledger.set_aside(events, error, "rejected", "")
            return
        with anyio.CancelScope(shield=True):  # once written, counted in the same breath
            kept = await self._file_call(letters.append, events)
        self.ledger.set_aside(events, error, "kept" if kept else "lost", str(letters.path))

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
        """Send the oldest spooled batch again; remove it once the sink took it.

        A batch that fails on data is split like a new one (and one that keeps failing
        unexpectedly, as `Outage.replay_failed` decides): what the sink cannot take is
        set aside, the rest written, and the batch removed, so it never holds back the
        newer ones. What a transient failure mid-split leaves is kept in its place.
        """
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
                if step.action == "split":
                    rest = await self.split(events, exc, stubborn=failure.kind == "unexpected")
                    if rest is not None:
                        left, failure, exc = rest
                        step = self.outage.replay_failed(failure, now=time.monotonic())
                        if step.action == "split":  # split again at the next probe
                            step = dataclasses.replace(step, action="keep")
                        if len(left) < len(events):
                            with anyio.CancelScope(shield=True):
                                await self._spool_call(spool.replace, segment, left)
                        events = left
                if step.action != "split":
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
        directory = None if self.spool is None else self.spool.directory
        return await self._file_call(function, *args, where=f"spool {directory}")

    async def _file_call(
        self, function: Callable[..., T], *args: object, where: str = "dead-letter file"
    ) -> T | None:
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except OSError as exc:
            logger.error("%s: %s failed: %s", self.description, where, exc)
            return None
