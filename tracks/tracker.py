"""`Tracker`: the engine every queued recorder shares, wrapped around one `Sink`.

Bounded inbox with a drop policy, batching by count, bytes and age, retries by a
`RetryPolicy`, an optional on-disk spool for outages, counters, `flush()` and a
shutdown with a deadline. The front door, `record()`, only appends to a deque:
it never awaits, never blocks and never raises.

One lifecycle: ``async with`` starts one writer task, which takes batches from
the inbox and hands them to the sink, one write at a time; leaving the block (or
`aclose()` inside it) flushes within the deadline and stops it. Nothing else ever
touches the sink. The writer's parts: `tracks.delivery` carries a batch to the
sink or the spool, `tracks.outage` decides what a failed write leads to (retry,
spool, drop, reject, split), `tracks.ledger` keeps the counters and their log
lines, `tracks.spool` the files, and `tracks.deadletter` the events a sink cannot
write, split from their batches so that the rest is written.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypedDict

import anyio
import anyio.abc

from tracks import deadletter
from tracks.deadletter import DeadLetters
from tracks.delivery import Delivery
from tracks.event import Event, json_text
from tracks.ledger import Ledger
from tracks.outage import Outage
from tracks.recorder import RecorderStats
from tracks.retry import RetryPolicy
from tracks.sinks import Sink
from tracks.spool import Spool

__all__ = ["Overflow", "Tracker", "TrackerOptions"]

logger = logging.getLogger(__name__)

Overflow = Literal["drop_oldest", "drop_newest"]
State = Literal["new", "running", "closing", "closed"]


class TrackerOptions(TypedDict, total=False):
    """The engine's knobs, shared by every queued recorder (see `Tracker`)."""

    queue_size: int
    overflow: Overflow
    batch_size: int
    batch_bytes: int | None
    flush_interval: float
    retry: RetryPolicy
    shutdown_timeout: float
    spool: str | Path | None
    max_spool_bytes: int
    dead_letter: str | Path | None


class Tracker:
    """A `Recorder` that queues events and writes them to a sink in batches.

    Use it as ``async with Tracker(sink) as recorder:``. Entering starts the writer;
    leaving flushes what was accepted within ``shutdown_timeout``, spools (or drops
    and counts) the rest, and closes the sink. A recorder is entered once.

    - `record()` works at any time and never blocks or raises. Before entering,
      events wait in the bounded inbox (the overflow policy applies) and are written
      once the recorder is entered. While closing and after, they are dropped and
      counted in `stats` (``dropped_by_name``).
    - `flush()` and `aclose()` belong inside the block: before entering they raise
      `RuntimeError` (nothing would deliver). After closing, `flush()` returns at
      once and `aclose()` does nothing.

    Args:
        sink: where batches go.
        description: shown to humans; defaults to the sink's.
        queue_size: inbox bound, in events.
        overflow: what a full inbox drops: the oldest queued event (default) or the new one.
        batch_size: most events per write.
        batch_bytes: most bytes per write (compact JSON of each event), or ``None``.
        flush_interval: longest time, in seconds, an event waits for a batch to fill.
            ``0`` writes as soon as the writer is free.
        retry: when to try a failed write again, and when to give up.
        shutdown_timeout: seconds `aclose()` spends flushing before it spools
            (or drops and counts) what is left.
        spool: a directory for batches that ran out of retries; ``None`` drops them.
        max_spool_bytes: spool bound; beyond it the oldest spooled batches are dropped.
        dead_letter: a JSON-lines file for events the sink cannot write (split from
            their batch, the rest of which is written); ``<spool>/dead-letter.jsonl``
            by default. With neither, such events are counted as rejected.

    Raises:
        ValueError: a knob is out of range.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        description: str | None = None,
        queue_size: int = 10_000,
        overflow: Overflow = "drop_oldest",
        batch_size: int = 500,
        batch_bytes: int | None = None,
        flush_interval: float = 1.0,
        retry: RetryPolicy | None = None,
        shutdown_timeout: float = 10.0,
        spool: str | Path | None = None,
        max_spool_bytes: int = 256 * 1024 * 1024,
        dead_letter: str | Path | None = None,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if overflow not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'drop_newest', got {overflow!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_bytes is not None and batch_bytes < 1:
            raise ValueError(f"batch_bytes must be >= 1 or None, got {batch_bytes}")
        if not flush_interval >= 0:
            raise ValueError(f"flush_interval must be >= 0, got {flush_interval}")
        if not shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0, got {shutdown_timeout}")
        self.sink = sink
        self.description = description or sink.description
        self._queue_size = queue_size
        self._drop_newest = overflow == "drop_newest"
        self._batch_size = batch_size
        self._batch_bytes = batch_bytes
        self._flush_interval = flush_interval
        self._retry = retry or RetryPolicy()
        self._shutdown_timeout = shutdown_timeout

        self._inbox: deque[Event] = deque()
        self._pending_since: float | None = None  # monotonic time the inbox became non-empty
        self._in_flight: Sequence[Event] = ()
        self._state: State = "new"

        # `_settled` counts accepted events that left the engine's hands (written,
        # spooled, rejected or dropped); flush() waits on it. The rest is in the ledger.
        self._accepted = 0
        self._settled = 0
        self._ledger = Ledger(self.description)

        # Writer coordination; anyio primitives are created inside the event loop.
        self._wakeup: anyio.Event | None = None
        self._writer_waiting = False
        self._flush_waiters: list[tuple[int, anyio.Event]] = []
        self._stopped: anyio.Event | None = None
        self._writer_scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

        if dead_letter is None and spool is not None:
            dead_letter = Path(spool) / deadletter.FILE_NAME
        self._outage = Outage(self._retry, spool=spool is not None)
        self._delivery = Delivery(
            sink,
            spool=None if spool is None else Spool(spool, max_bytes=max_spool_bytes),
            dead_letters=None if dead_letter is None else DeadLetters(dead_letter),
            outage=self._outage,
            ledger=self._ledger,
            description=self.description,
        )

    # -- front door ---------------------------------------------------------

    def record(self, event: Event) -> None:
        """Queue an event. Never blocks, never raises; a full inbox drops by policy, and counts.

        Before entering, the event waits in the inbox; once closing, it is dropped and counted.
        """
        try:
            if self._state in ("closing", "closed") or not isinstance(event, Event):
                self._ledger.drop_event(event)
                return
            inbox = self._inbox
            depth = len(inbox)
            if depth >= self._queue_size:
                if self._drop_newest:
                    self._ledger.drop_event(event)
                    return
                self._ledger.drop_event(inbox.popleft())
                self._settled += 1
            elif depth == 0:
                self._pending_since = time.monotonic()
            inbox.append(event)
            self._accepted += 1
            # Wake the writer only when it has something new to decide.
            if self._writer_waiting and (
                depth == 0 or depth + 1 >= self._batch_size or self._flush_interval == 0
            ):
                self._wake()
        except Exception:  # pragma: no cover - the front door must hold even if we have a bug
            logger.exception("%s: record() failed", self.description)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        return self._ledger.stats(accepted=self._accepted, queue_depth=len(self._inbox))

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"{self.description}: a recorder can be started only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._state = "running"
        self._stopped = anyio.Event()
        task_group.start_soon(self._run, self._stopped, name=f"tracks writer {self.description}")
        logger.info("recording events to %s", self.description)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.aclose()
        finally:
            task_group, self._task_group = self._task_group, None
            if task_group is not None:
                await task_group.__aexit__(exc_type, exc, traceback)

    def _started(self, verb: str) -> anyio.Event:
        """The writer's stop signal; misuse outside the lifecycle raises."""
        if self._stopped is None:
            raise RuntimeError(
                f"{self.description}: {verb}() before the recorder was started;"
                " use `async with recorder:` (record() may queue events before it)"
            )
        return self._stopped

    async def flush(self) -> None:
        """Return once every event accepted so far is written, spooled or counted as lost.

        After close it returns at once: everything accepted is settled by then.

        Raises:
            RuntimeError: the recorder was never entered, so nothing would deliver.
        """
        stopped = self._started("flush")
        target = self._accepted
        if self._settled >= target:
            return
        if self._state != "running":
            await stopped.wait()
            return
        waiter = (target, anyio.Event())
        self._flush_waiters.append(waiter)
        self._wake()
        try:
            await waiter[1].wait()
        finally:
            if waiter in self._flush_waiters:
                self._flush_waiters.remove(waiter)

    async def aclose(self) -> None:
        """Flush everything accepted within ``shutdown_timeout``, spool or count the rest, stop.

        Leaving ``async with`` calls it; call it inside the block to close early.
        Idempotent; a second caller waits for the first to finish.

        Raises:
            RuntimeError: the recorder was never entered.
        """
        stopped = self._started("aclose")
        if self._state != "running":
            await stopped.wait()
            return
        self._state = "closing"
        self._outage.begin_close()
        self._wake()
        # Shielded: a cancelled host still gets its bounded, graceful flush.
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(self._shutdown_timeout):
                await stopped.wait()
            if not stopped.is_set() and self._writer_scope is not None:
                self._writer_scope.cancel()
            await stopped.wait()

    # -- the writer ---------------------------------------------------------

    async def _run(self, stopped: anyio.Event) -> None:
        try:
            with anyio.CancelScope() as self._writer_scope:
                await self._delivery.load()
                await self._loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._abandon()
                try:
                    await self.sink.aclose()
                except Exception:
                    logger.exception("%s: closing the sink failed", self.description)
                self._state = "closed"
                self._ledger.report_drops(final=True)
                for _, waiter in self._flush_waiters:
                    waiter.set()
                stopped.set()
                logger.info("stopped recording events to %s", self.description)

    async def _loop(self) -> None:
        outage = self._outage
        while True:
            if outage.replay_due(spooled=self._delivery.spooled, now=time.monotonic()):
                await self._delivery.replay()
                continue
            if self._batch_ready():
                await self._dispatch(self._take_batch())
                self._ledger.report_drops()
                continue
            if (
                self._state == "closing"
                and not self._inbox
                and not outage.replaying(spooled=self._delivery.spooled)
            ):
                return
            await self._wait()

    def _batch_ready(self) -> bool:
        inbox = self._inbox
        if not inbox:
            return False
        if len(inbox) >= self._batch_size or self._flush_waiters or self._state == "closing":
            return True
        assert self._pending_since is not None  # set whenever the inbox is non-empty
        return time.monotonic() - self._pending_since >= self._flush_interval

    async def _wait(self) -> None:
        self._wakeup = anyio.Event()
        now = time.monotonic()
        deadline = self._outage.probe_at(spooled=self._delivery.spooled)
        if self._inbox and self._pending_since is not None:
            deadline = min(deadline, self._pending_since + self._flush_interval)
        self._writer_waiting = True
        try:
            with anyio.move_on_after(deadline - now):
                await self._wakeup.wait()
        finally:
            self._writer_waiting = False

    def _take_batch(self) -> list[Event]:
        inbox = self._inbox
        count = min(len(inbox), self._batch_size)
        if self._batch_bytes is None:
            batch = [inbox.popleft() for _ in range(count)]
        else:
            batch, size = [], 0
            while inbox and len(batch) < count:
                event_size = len(json_text(inbox[0].to_json()).encode()) + 1
                if batch and size + event_size > self._batch_bytes:
                    break
                batch.append(inbox.popleft())
                size += event_size
        if not inbox:
            self._pending_since = None
        return batch

    async def _dispatch(self, batch: Sequence[Event]) -> None:
        # In flight from the moment it left the inbox: if the shutdown deadline cancels
        # the write, _abandon() still spools (or counts) these events. send() returns
        # from a spooled batch without a checkpoint, so it is never spooled twice.
        self._in_flight = batch
        await self._delivery.send(batch)
        self._in_flight = ()
        self._settle(len(batch))

    def _settle(self, count: int) -> None:
        self._settled += count
        for target, waiter in self._flush_waiters:
            if self._settled >= target:
                waiter.set()

    async def _abandon(self) -> None:
        """Spool, or drop and count, whatever the writer leaves behind."""
        leftovers = [*self._in_flight, *self._inbox]
        self._in_flight = ()
        self._inbox.clear()
        self._pending_since = None
        if not leftovers:
            return
        if self._delivery.spool is not None:
            await self._delivery.keep(leftovers)
        else:
            self._ledger.drop_batch(leftovers, "shutdown ran out of time")
        self._settle(len(leftovers))
