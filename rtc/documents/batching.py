"""The batching every document store shares: a queue written within `flush_interval`, retried
with backoff while the database is away, compaction that loses nothing. Not a database: the
subclasses (`sqlite`, `postgresql`) say how a batch is inserted, a room read and replaced.

An update is applied in memory first, then queued here, so editing never waits for a disk
or a network; a crash loses at most the last interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
from anyio.abc import TaskGroup
from pycrdt import merge_updates

from rtc.ids import RoomKey

__all__ = [
    "BatchedDocuments",
    "DocumentStats",
    "StoreUnavailableError",
    "merged_by_room",
    "retry_delay",
]

logger = logging.getLogger(__name__)

Item = tuple[int, int, bytes]  # (blog_id, post_id, update)

MAX_RETRY_DELAY = 1.0


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th consecutive failed write (0-based). Pure."""
    return min(0.05 * 2.0**attempt, MAX_RETRY_DELAY)


def merged_by_room(batch: list[Item]) -> list[Item]:
    """The batch with each room's updates merged into one, in the order rooms first appear.

    A merged update is what applying the room's updates in order gives (yrs merges them), so
    a room loads the same document from one row as from many, while the database writes a
    row per room and batch (a busy room's keystrokes: 20 rows in 0.1 s) and compacts far
    less often. The updates were applied by this server already: nothing untrusted is
    merged. Should yrs refuse, the batch is written as it came. Pure.
    """
    if len(batch) < 2:
        return batch
    rooms: dict[tuple[int, int], list[bytes]] = {}
    for blog_id, post_id, update in batch:
        rooms.setdefault((blog_id, post_id), []).append(update)
    if len(rooms) == len(batch):
        return batch
    try:
        return [
            (blog_id, post_id, updates[0] if len(updates) == 1 else merge_updates(*updates))
            for (blog_id, post_id), updates in rooms.items()
        ]
    except ValueError:  # pragma: no cover - yrs merges what it produced
        logger.warning("could not merge a batch of document updates; writing them one by one")
        return batch


class StoreUnavailableError(Exception):
    """The database could not be reached or refused a write; try again later."""


@dataclass(frozen=True, slots=True)
class DocumentStats:
    """What a document store has done so far (read by /metrics)."""

    pending: int  # updates queued, not yet written
    written: int  # updates written (compacted states included)
    write_failures: int  # write attempts that failed (each retried)
    compactions: int  # rooms replaced by one update
    compactions_skipped: int  # another node held the room's compaction lock


class BatchedDocuments:
    """The queue, the write loop and compaction; subclasses do the I/O.

    Args:
        description: where the documents go, for log lines (no password).
        flush_interval: seconds a batch may wait before it is written.
        compact_after: rows a room may have before it is compacted.
    """

    transient: tuple[type[BaseException], ...] = (StoreUnavailableError,)

    def __init__(
        self, description: str, *, flush_interval: float = 0.1, compact_after: int = 1000
    ) -> None:
        if flush_interval <= 0 or compact_after < 1:
            raise ValueError("flush_interval must be > 0 and compact_after >= 1")
        self.description = description
        self._flush_interval = flush_interval
        self.compact_after = compact_after
        self._pending: list[Item] = []
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._task_group: TaskGroup | None = None
        self._closing = False
        self._closed = anyio.Event()  # set by aclose(): cuts the batching wait short
        self.rows: dict[RoomKey, int] = {}
        self._written = self._failures = self._compactions = self._skipped = 0
        self._outage_since: float | None = None  # monotonic time of the first failed write
        self._outage_failures = 0

    # --- what subclasses implement -----------------------------------------------------

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _insert(self, batch: list[Item]) -> None:
        raise NotImplementedError

    async def _select(self, key: RoomKey) -> list[bytes]:
        raise NotImplementedError

    async def _replace(self, key: RoomKey, state: bytes) -> bool:
        """Replace the room's rows by `state`; False if another node is compacting it."""
        raise NotImplementedError

    # --- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._write_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Write everything queued (retrying for a while), then close."""
        if self._task_group is None:
            return
        self._closing = True
        self._closed.set()
        self._wake.set()
        task_group, self._task_group = self._task_group, None
        await task_group.__aexit__(None, None, None)
        # A locked file, a full disk or a database away at shutdown: keep trying for a
        # while, then say clearly what could not be written rather than crash the exit.
        for attempt in range(10):
            try:
                await self.flush()
                break
            except self.transient as error:
                self._failed(error)
                await anyio.sleep(min(0.1 * 2**attempt, 2.0))
        else:
            logger.error("%d document updates could not be written to %s",
                         len(self._pending), self.description)
        async with self._lock:
            await self._close()

    # --- the interface -----------------------------------------------------------------

    @property
    def stats(self) -> DocumentStats:
        return DocumentStats(
            pending=len(self._pending),
            written=self._written,
            write_failures=self._failures,
            compactions=self._compactions,
            compactions_skipped=self._skipped,
        )

    def append(self, key: RoomKey, update: bytes) -> None:
        """Queue an applied update; never blocks."""
        self._pending.append((key.blog_id, key.post_id, update))
        self.rows[key] = self.rows.get(key, 0) + 1
        self._wake.set()

    def wants_compaction(self, key: RoomKey) -> bool:
        """Whether the room's rows have piled up past `compact_after`."""
        return self.rows.get(key, 0) > self.compact_after

    async def load(self, key: RoomKey) -> list[bytes]:
        """Every stored update of a room, oldest first (queued ones included).

        Reads only: queued updates are taken from memory, under the lock that writes them,
        so an update in flight is seen exactly once.
        """
        room = (key.blog_id, key.post_id)
        async with self._lock:
            rows = await self._select(key)
            rows += [update for (*item, update) in self._pending if tuple(item) == room]
        self.rows[key] = len(rows)
        return rows

    async def compact(self, key: RoomKey, state_of: Callable[[], bytes]) -> None:
        """Replace a room's rows by one update holding its whole state.

        `state_of` is called once everything older is written, and the room's queued updates
        are dropped in the same step: the state includes them, and anything applied later is
        queued afterwards, so nothing is lost or written twice. A failure or a compaction
        another node is running puts the state back in the queue: it is only an optimisation.
        """
        room = (key.blog_id, key.post_id)
        async with self._lock:
            try:
                await self._write_pending()
            except self.transient as error:
                self._failed(error)
                self._wake.set()
                return
            state = state_of()
            self._pending = [item for item in self._pending if item[:2] != room]
            try:
                replaced = await self._replace(key, state)
            except self.transient as error:
                self._failed(error)
                replaced = None
            if not replaced:
                # The state holds every update just dropped from the queue: queue it instead.
                self._pending.append((*room, state))
                self.rows[key] = self.rows.get(key, 0) + 1
                self._wake.set()
                self._skipped += replaced is False
                return
            self._recovered()
            self._written += 1
            self._compactions += 1
        self.rows[key] = 1

    def forget(self, key: RoomKey) -> None:
        """Stop tracking an unloaded room's row count."""
        self.rows.pop(key, None)

    async def flush(self) -> None:
        """Write everything queued so far (raises the backend's error if it cannot)."""
        async with self._lock:
            await self._write_pending()

    # --- internals ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        attempt = 0
        while not self._closing:
            await self._wake.wait()
            self._wake = anyio.Event()
            # Batch what arrives within the interval into one transaction (a close cuts the
            # wait short: the final flush follows at once).
            with anyio.move_on_after(self._flush_interval):
                await self._closed.wait()
            try:
                await self.flush()
            except self.transient as error:
                # Kept queued and retried with backoff until it lands: never dropped.
                self._failed(error)
                self._wake.set()
                with anyio.move_on_after(retry_delay(attempt)):
                    await self._closed.wait()
                attempt += 1
            else:
                attempt = 0

    async def _write_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        rows = merged_by_room(batch)
        try:
            await self._insert(rows)
        except BaseException:
            self._pending[:0] = batch
            raise
        self._written += len(batch)
        if len(rows) < len(batch):  # a room's updates went in as one row: count its rows
            queued: dict[tuple[int, int], int] = {}
            for blog_id, post_id, _ in batch:
                queued[blog_id, post_id] = queued.get((blog_id, post_id), 0) + 1
            for (blog_id, post_id), count in queued.items():
                key = RoomKey(blog_id, post_id)
                if count > 1 and key in self.rows:
                    self.rows[key] = max(1, self.rows[key] - count + 1)
        self._recovered()

    def _failed(self, error: BaseException) -> None:
        """Count a failed write; the first of an outage is logged, the rest are counted."""
        self._failures += 1
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            logger.warning("writing document updates to %s failed; will retry: %s: %s",
                           self.description, type(error).__name__, str(error).strip())
        else:
            logger.debug("writing document updates to %s failed again: %s",
                         self.description, error)

    def _recovered(self) -> None:
        if self._outage_since is not None:
            logger.warning("document updates written to %s again after %d failed attempts "
                           "(%.1f s)", self.description, self._outage_failures,
                           time.monotonic() - self._outage_since)
            self._outage_since = None
            self._outage_failures = 0
