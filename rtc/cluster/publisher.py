"""The writing half of the rooms' logs: a bounded queue of entries, written to the rooms'
Redis streams by one task, one pipeline (no transaction) per batch, on a lean connection of
its own (`rtc.cluster.wire.Wire`). Not the reading: that is
`rtc.cluster.streams`, which owns this publisher and tells it when Redis is lost or back.

- **Publishing.** `Publisher.publish` never awaits and never raises: it appends to a bounded
  queue (a full queue drops the entry, counts it and marks the room for resync). The queue
  is written in order, so the entries of one node in one room keep their order.
- **Trimming.** Each ``XADD`` trims with ``MINID ~ <Redis now - retention_ms>``: memory is
  bounded by time, and no entry younger than the retention is trimmed, so a reader that
  keeps up never finds a gap. Redis takes one trim argument per ``XADD``, so the length cap
  (``max_len``) is a backstop applied by an ``XTRIM MAXLEN ~`` every `trim_every` entries a
  node writes to a followed room. Streams also expire about `expire_ms` after their last
  write, so an abandoned room leaves nothing behind: the expiry is renewed with the first
  write of a room after `renew_s` (a quarter of it), not with every batch.
- **Losing Redis.** A failed batch is dropped and reported (`lost`); while paused (Redis
  unavailable), what is queued or published is dropped, and its rooms are marked: a marked
  room that is followed is resynchronised after the next batch that lands, unless the
  owner's recovery resynchronised every room first (`clear_marks`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable

import anyio
from redis.asyncio import Redis
from redis.exceptions import RedisError

from rtc.cluster.entries import Entry, encode_entry
from rtc.cluster.keys import Keys
from rtc.cluster.positions import trim_floor
from rtc.cluster.wire import Wire, pack
from rtc.ids import RoomKey

__all__ = ["REDIS_ERRORS", "Publisher"]

logger = logging.getLogger(__name__)

# What a lost Redis looks like: redis-py's errors (its ConnectionError and TimeoutError are
# RedisErrors), a socket error, or our own deadline (anyio.fail_after raises TimeoutError).
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

_Queued = tuple[RoomKey, dict[bytes, bytes]]
RENEWED_LIMIT = 4096  # streams whose expiry renewal is remembered, before the stale go


class Publisher:
    """One node's queue of entries for its rooms' streams, and the task that writes it.

    Args:
        redis: the client (``decode_responses=False``).
        keys: the key names.
        queue_size: how many entries may wait to be published; more are dropped.
        batch_size: how many entries one pipeline writes at most.
        max_len: a cap on a stream's length (approximate), a backstop for bursts.
        retention_ms: how long an entry stays in its stream at least.
        timeout_s: how long one pipeline may take.
        redis_now_ms: Redis's clock in milliseconds, None until known.
        followed: whether this node reads a room (only those are trimmed and resynced).
        resync: called for a followed room whose entries were dropped.
        lost: called with the error when a batch fails (the owner then calls `pause`).
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        *,
        queue_size: int,
        batch_size: int,
        max_len: int,
        retention_ms: int,
        timeout_s: float,
        redis_now_ms: Callable[[], int | None],
        followed: Callable[[RoomKey], bool],
        resync: Callable[[RoomKey], None],
        lost: Callable[[BaseException], None],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.max_len = max_len
        self.retention_ms = retention_ms
        self.timeout_s = timeout_s
        self.trim_every = max(1, min(1_000, max_len // 10))
        self.expire_ms = max(2 * retention_ms, 60_000)
        self.renew_s = self.expire_ms / 4000
        self._redis_now_ms = redis_now_ms
        self._followed = followed
        self._resync = resync
        self._lost = lost

        self.entries_published = 0
        self.entries_dropped = 0  # queue full, Redis down, or refused by Redis
        self.refusals = 0  # batches in which Redis refused entries

        self._queue: deque[_Queued] = deque()
        self._marked: set[RoomKey] = set()  # rooms whose entries were dropped
        self._since_trim: dict[RoomKey, int] = {}
        self._renewed: dict[str, float] = {}  # stream -> monotonic time its expiry was set
        self._wire: Wire | None = None
        self._in_flight: list[_Queued] | None = None
        self._write_scope: anyio.CancelScope | None = None
        self._paused = False
        self._wake = anyio.Event()
        self._back = anyio.Event()  # set while not paused (once running)

    @property
    def queued(self) -> int:
        """How many entries wait to be written."""
        return len(self._queue)

    def publish(self, key: RoomKey, entry: Entry) -> None:
        """Queue `entry` for `key`'s stream. Never awaits, never raises; dropped (counted,
        the room marked) when the queue is full or the publisher is paused."""
        if self._paused or len(self._queue) >= self.queue_size:
            self.entries_dropped += 1
            self._marked.add(key)
            return
        self._queue.append((key, encode_entry(entry)))
        self._wake.set()

    def forget(self, key: RoomKey) -> None:
        """`key` is no longer followed (what is still queued for it is still written)."""
        self._since_trim.pop(key, None)
        self._renewed.pop(self._keys.log(key), None)
        self._marked.discard(key)

    def clear_marks(self) -> None:
        """Every followed room is being resynchronised: no need to do it again."""
        self._marked.clear()

    def pause(self) -> None:
        """Redis is lost: drop the batch under way and the queue, and drop what is published
        until `resume`. Nothing from before a loss lands later."""
        self._paused = True
        self._back = anyio.Event()
        if self._in_flight is not None:
            self._drop(self._in_flight)
            self._in_flight = None
        if self._write_scope is not None:
            self._write_scope.cancel()
        self._drop_queue()
        self._wake.set()

    def resume(self) -> None:
        """Redis answers again: publish again."""
        self._paused = False
        self._back.set()

    async def run(self) -> None:
        """Write the queue until cancelled."""
        if not self._paused:
            self._back.set()
        try:
            await self._run()
        finally:
            self._close_wire()

    def _close_wire(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    async def _run(self) -> None:
        while True:  # until cancelled
            if not self._queue:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            if self._paused:
                self._drop_queue()
                await self._back.wait()
                continue
            count = min(len(self._queue), self.batch_size)
            await self._write([self._queue.popleft() for _ in range(count)])

    async def _write(self, batch: list[_Queued]) -> None:
        minid = trim_floor(self._redis_now_ms(), self.retention_ms)
        trimming = ("MINID", "~", minid) if minid is not None else ()
        commands: list[bytes] = []
        names: dict[str, None] = {}
        trims: list[str] = []
        for key, fields in batch:
            name = self._keys.log(key)
            names[name] = None
            commands.append(pack("XADD", name, *trimming, "*", *_flat(fields)))
            if self._followed(key):  # (a room only written to, a kick, is seldom written)
                since = self._since_trim.get(key, 0) + 1
                if since >= self.trim_every:
                    trims.append(name)
                    since = 0
                self._since_trim[key] = since
        for name in trims:
            commands.append(pack("XTRIM", name, "MAXLEN", "~", self.max_len))
        now = time.monotonic()
        renewed = self._renewed
        if len(renewed) > RENEWED_LIMIT:  # rooms written but never followed (kicks)
            self._renewed = renewed = {
                name: at for name, at in renewed.items() if now - at < self.renew_s
            }
        for name in names:
            if now - renewed.get(name, -self.renew_s) >= self.renew_s:
                commands.append(pack("PEXPIRE", name, self.expire_ms))
                renewed[name] = now
        self._in_flight = batch
        try:
            with anyio.CancelScope() as self._write_scope:
                wire = self._wire
                if wire is None or wire.closed:
                    wire = self._wire = await Wire.open(self._redis, self.timeout_s)
                results = await wire.send(commands, self.timeout_s)
        except REDIS_ERRORS as error:
            self._close_wire()
            self._renewed.clear()  # Redis may have restarted empty: renew every expiry
            if self._in_flight is batch:
                self._in_flight = None
                self._drop(batch)
            self._lost(error)
            return
        finally:
            self._write_scope = None
            if self._wire is not None and self._wire.closed:
                self._wire = None  # cancelled by `pause`
                self._renewed.clear()
        if self._in_flight is not batch:
            return  # dropped by `pause` while under way: nothing from before a loss lands later
        self._in_flight = None
        refused = 0
        for (key, _), result in zip(batch, results, strict=False):
            if isinstance(result, Exception):
                refused += 1
                self._marked.add(key)
            else:
                self.entries_published += 1
        if refused:
            self.entries_dropped += refused
            self.refusals += 1
            logger.warning("cluster streams: Redis refused %d entries", refused)
        marked, self._marked = self._marked, set()
        for key in marked:
            if self._followed(key):
                self._resync(key)

    def _drop_queue(self) -> None:
        """Drop what waits to be published (queued before the loss was known); its rooms
        are resynchronised when Redis is back."""
        self._drop(self._queue)
        self._queue.clear()

    def _drop(self, batch: Iterable[_Queued]) -> None:
        for key, _ in batch:
            self.entries_dropped += 1
            self._marked.add(key)


def _flat(fields: dict[bytes, bytes]) -> list[bytes]:
    """An entry's fields as XADD takes them: name, value, name, value..."""
    return [item for pair in fields.items() for item in pair]
