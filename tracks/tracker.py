"""`Tracker`: the engine every queued recorder shares, wrapped around one `Sink`.

Bounded inbox with a drop policy, batching by count, bytes and age, retries by a
`RetryPolicy`, an optional on-disk spool for outages, counters, `flush()` and a
shutdown with a deadline. The front door, `record()`, only appends to a deque:
it never awaits, never blocks and never raises.

One writer task (started by ``async with``) takes batches from the inbox and
hands them to the sink, one write at a time. When a batch runs out of retries it
goes to the spool (or is dropped and counted, without one); while the spool holds
anything, new batches join it so the backend later receives them oldest first,
and the writer probes the backend on the retry schedule.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypedDict, TypeVar

import anyio
import anyio.abc
import anyio.to_thread

from tracks.event import Event, json_text
from tracks.recorder import RecorderStats
from tracks.retry import RetryPolicy
from tracks.sinks import RejectedError, Sink, TransientError
from tracks.spool import Spool

__all__ = ["Overflow", "Tracker", "TrackerOptions"]

logger = logging.getLogger(__name__)

Overflow = Literal["drop_oldest", "drop_newest"]
State = Literal["new", "running", "closing", "closed"]
T = TypeVar("T")

DROP_LOG_INTERVAL = 10.0  # seconds between aggregated "dropped N events" warnings


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


class Tracker:
    """A `Recorder` that queues events and writes them to a sink in batches.

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
        self._spool = None if spool is None else Spool(spool, max_bytes=max_spool_bytes)

        self._inbox: deque[Event] = deque()
        self._pending_since: float | None = None  # monotonic time the inbox became non-empty
        self._in_flight: Sequence[Event] = ()
        self._state: State = "new"

        # Counters. `_settled` counts accepted events that left the engine's hands
        # (written, spooled, rejected or dropped); flush() waits on it.
        self._accepted = 0
        self._written = 0
        self._dropped = 0
        self._retried = 0
        self._spooled = 0
        self._rejected = 0
        self._dropped_by_name: dict[str, int] = {}
        self._settled = 0

        # Writer coordination; anyio primitives are created inside the event loop.
        self._wakeup: anyio.Event | None = None
        self._writer_waiting = False
        self._flush_waiters: list[tuple[int, anyio.Event]] = []
        self._stopped: anyio.Event | None = None
        self._writer_scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._sink_lock: anyio.Lock | None = None

        # Outage bookkeeping.
        self._failing = False
        self._failures = 0
        self._rejection_logged = False
        self._probe_attempt = 0
        self._next_probe = 0.0
        self._close_failures = 0  # spool replays that failed during shutdown
        self._drops_logged = 0
        self._drops_logged_at = -math.inf

    # -- front door ---------------------------------------------------------

    def record(self, event: Event) -> None:
        """Queue an event. Never blocks, never raises; a full inbox drops by policy, and counts."""
        try:
            if self._state in ("closing", "closed") or not isinstance(event, Event):
                self._count_drop(event)
                return
            inbox = self._inbox
            depth = len(inbox)
            if depth >= self._queue_size:
                if self._drop_newest:
                    self._count_drop(event)
                    return
                self._count_drop(inbox.popleft())
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

    def _count_drop(self, event: object) -> None:
        name = event.name if isinstance(event, Event) else "<not an Event>"
        self._dropped += 1
        self._dropped_by_name[name] = self._dropped_by_name.get(name, 0) + 1

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def stats(self) -> RecorderStats:
        """A snapshot of the counters."""
        return RecorderStats(
            accepted=self._accepted,
            written=self._written,
            dropped=self._dropped,
            retried=self._retried,
            spooled=self._spooled,
            rejected=self._rejected,
            queue_depth=len(self._inbox),
            dropped_by_name=dict(self._dropped_by_name),
        )

    # -- lifecycle ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"{self.description}: a recorder can be started only once")
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        self._start(task_group)
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

    def _start(self, task_group: anyio.abc.TaskGroup) -> None:
        self._state = "running"
        self._stopped = anyio.Event()
        task_group.start_soon(self._run, name=f"tracks writer {self.description}")

    async def flush(self) -> None:
        """Return once every event accepted so far is written, spooled or counted as lost."""
        target = self._accepted
        if self._settled >= target:
            return
        if self._state == "new":
            # Not started: deliver here, with the same retries and spool.
            while self._settled < target and self._inbox:
                await self._dispatch(self._take_batch())
            return
        if self._state != "running":
            assert self._stopped is not None  # set by _start() before leaving "new"
            await self._stopped.wait()
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

        Idempotent; a second caller waits for the first to finish.
        """
        if self._state == "new":
            async with anyio.create_task_group() as task_group:
                self._start(task_group)
                await self._close()
        else:
            await self._close()

    async def _close(self) -> None:
        assert self._stopped is not None  # set by _start()
        if self._state == "running":
            self._state = "closing"
            self._next_probe = 0.0  # try the spool once more right away
            self._wake()
            # Shielded: a cancelled host still gets its bounded, graceful flush.
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(self._shutdown_timeout):
                    await self._stopped.wait()
                if not self._stopped.is_set() and self._writer_scope is not None:
                    self._writer_scope.cancel()
                await self._stopped.wait()
        else:
            await self._stopped.wait()

    # -- the writer ---------------------------------------------------------

    async def _run(self) -> None:
        try:
            with anyio.CancelScope() as self._writer_scope:
                if self._spool is not None:
                    await self._spool_call(self._spool.load)
                await self._loop()
        finally:
            with anyio.CancelScope(shield=True):
                await self._abandon()
                try:
                    await self.sink.aclose()
                except Exception:
                    logger.exception("%s: closing the sink failed", self.description)
                self._state = "closed"
                self._report_drops(final=True)
                for _, waiter in self._flush_waiters:
                    waiter.set()
                assert self._stopped is not None
                self._stopped.set()
                logger.info("stopped recording events to %s", self.description)

    async def _loop(self) -> None:
        while True:
            if self._spool_due():
                await self._replay_spool()
                continue
            if self._batch_ready():
                await self._dispatch(self._take_batch())
                self._report_drops()
                continue
            if self._state == "closing" and not self._inbox and not self._spool_retrying():
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

    def _spool_retrying(self) -> bool:
        """Whether spooled batches wait for another attempt.

        At shutdown the spool gets the policy's ``max_attempts`` (within the
        deadline); what is still spooled after that stays on disk for the next run.
        """
        if self._spool is None or not self._spool.pending:
            return False
        return self._state != "closing" or self._close_failures < self._retry.max_attempts

    def _spool_due(self) -> bool:
        return self._spool_retrying() and time.monotonic() >= self._next_probe

    async def _wait(self) -> None:
        self._wakeup = anyio.Event()
        now = time.monotonic()
        deadline = math.inf
        if self._inbox and self._pending_since is not None:
            deadline = self._pending_since + self._flush_interval
        if self._spool_retrying():
            deadline = min(deadline, self._next_probe)
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
        # In flight from the moment it left the inbox: acquiring the lock is a checkpoint,
        # and a shutdown deadline cancelling it there must still spool these events.
        self._in_flight = batch
        async with self._lock():
            if self._spool is not None and self._spool.pending:
                # Outage: join the spool, so the backend later gets everything oldest first.
                await self._spool_batch(batch)
            else:
                await self._deliver(batch)
            self._in_flight = ()
        self._settle(len(batch))

    def _settle(self, count: int) -> None:
        self._settled += count
        for target, waiter in self._flush_waiters:
            if self._settled >= target:
                waiter.set()

    async def _deliver(self, batch: Sequence[Event]) -> None:
        attempt = 0
        while True:
            attempt += 1
            retry_after: float | None = None
            try:
                await self.sink.write(batch)
            except RejectedError as exc:
                self._reject(len(batch), exc)
                return
            except TransientError as exc:
                retry_after = exc.retry_after
                self._note_failure(exc)
            except Exception as exc:
                self._note_failure(exc, unexpected=True)
            else:
                self._written += len(batch)
                self._note_recovered()
                return
            delay = self._retry.delay(attempt, retry_after)
            if delay is None or (self._state == "closing" and self._spool is not None):
                if self._spool is None:
                    self._drop_batch(batch, "its retries ran out")
                else:
                    await self._spool_batch(batch)
                    self._probe_attempt = attempt
                    self._next_probe = time.monotonic() + self._retry.backoff(attempt, retry_after)
                return
            self._retried += len(batch)
            await anyio.sleep(delay)

    async def _replay_spool(self) -> None:
        assert self._spool is not None
        spool = self._spool
        segment = spool.oldest()
        if segment is None:
            return
        events = await self._spool_call(spool.read, segment)
        if events is None:  # unreadable: logged; do not let it block the rest
            self._dropped += segment.count
            await self._spool_call(spool.remove, segment)
            return
        async with self._lock():
            try:
                if events:
                    await self.sink.write(events)
            except RejectedError as exc:
                self._reject(len(events), exc)
            except Exception as exc:
                retry_after = exc.retry_after if isinstance(exc, TransientError) else None
                self._note_failure(exc, unexpected=not isinstance(exc, TransientError))
                self._retried += len(events)
                self._probe_attempt += 1
                self._next_probe = time.monotonic() + self._retry.backoff(
                    self._probe_attempt, retry_after
                )
                if self._state == "closing":
                    self._close_failures += 1
                return
            else:
                self._written += len(events)
                self._probe_attempt = 0
                self._note_recovered()
            with anyio.CancelScope(shield=True):
                await self._spool_call(spool.remove, segment)

    def _lock(self) -> anyio.Lock:
        if self._sink_lock is None:
            self._sink_lock = anyio.Lock()
        return self._sink_lock

    async def _spool_batch(self, batch: Sequence[Event]) -> None:
        assert self._spool is not None
        # Shielded: once the file is renamed into place, in-flight must be cleared
        # in the same breath, or a shutdown would spool the batch twice.
        with anyio.CancelScope(shield=True):
            discarded = await self._spool_call(self._spool.append, batch)
            self._in_flight = ()
        if discarded is None:
            self._drop_batch(batch, "the spool could not be written")
            return
        self._spooled += len(batch)
        if discarded:
            self._drop_batch(discarded, "the spool is full")

    async def _spool_call(self, function: Callable[..., T], *args: object) -> T | None:
        try:
            return await anyio.to_thread.run_sync(function, *args)
        except OSError as exc:
            logger.error("%s: spool %s failed: %s", self.description, self._spool_dir(), exc)
            return None

    def _spool_dir(self) -> Path | None:
        return None if self._spool is None else self._spool.directory

    async def _abandon(self) -> None:
        """Spool, or drop and count, whatever the writer leaves behind."""
        leftovers = [*self._in_flight, *self._inbox]
        self._in_flight = ()
        self._inbox.clear()
        self._pending_since = None
        if not leftovers:
            return
        if self._spool is not None:
            await self._spool_batch(leftovers)
        else:
            self._drop_batch(leftovers, "shutdown ran out of time")
        self._settle(len(leftovers))

    # -- counting and logging -----------------------------------------------

    def _drop_batch(self, batch: Sequence[Event], reason: str) -> None:
        for event in batch:
            self._count_drop(event)
        logger.error("%s: dropped %d events: %s", self.description, len(batch), reason)
        self._drops_logged += len(batch)

    def _reject(self, count: int, exc: Exception) -> None:
        self._rejected += count
        # Logged once: the same misconfiguration would otherwise repeat every batch.
        if not self._rejection_logged:
            self._rejection_logged = True
            logger.error(
                "%s: backend rejected %d events, not retrying: %s", self.description, count, exc
            )
        else:
            logger.debug("%s: backend rejected %d events: %s", self.description, count, exc)

    def _note_failure(self, exc: Exception, *, unexpected: bool = False) -> None:
        self._failures += 1
        if self._failing:
            return
        # Once per burst: the first failure is logged, the rest only counted.
        self._failing = True
        if unexpected:
            logger.error("%s: sink failed, retrying", self.description, exc_info=exc)
        else:
            logger.warning("%s: sink unavailable, retrying: %s", self.description, exc)

    def _note_recovered(self) -> None:
        if self._failing:
            logger.info(
                "%s: sink recovered after %d failed attempts", self.description, self._failures
            )
            self._failing = False
            self._failures = 0

    def _report_drops(self, *, final: bool = False) -> None:
        unlogged = self._dropped - self._drops_logged
        if unlogged <= 0:
            return
        now = time.monotonic()
        if final or now - self._drops_logged_at >= DROP_LOG_INTERVAL:
            logger.warning(
                "%s: dropped %d events (queue full or recorder closed); %d in total",
                self.description,
                unlogged,
                self._dropped,
            )
            self._drops_logged = self._dropped
            self._drops_logged_at = now
