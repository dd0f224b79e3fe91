"""The rooms' logs in Redis: one Redis stream per room (``rtc:{blog:post}:log``), read by one
reader task and written by one publisher task per node.

This is the cross-node fan-out (issue 14, item 3). Streams rather than pub/sub: a reader has
a position per room, so nothing published while it reconnects is lost, and a gap it cannot
fill (the position was trimmed away, Redis restarted empty, a connection broke) is found and
reported as `resync(key)`: the caller then runs the sync exchange (``sync``/``reply``
entries) that recovers the difference from the documents themselves.

- **Reading.** One blocking ``XREAD`` over every followed room's stream, on a connection of
  its own, ``block_ms`` at a time, so that a newly followed room joins the read within
  ``block_ms``. Entries written by this node, and entries aimed (``t``) at another node, are
  skipped; malformed ones are counted and skipped; ``deliver(key, entry)`` gets the rest, in
  stream order.
- **Publishing.** `publish` never awaits and never raises: it appends to a bounded queue (a
  full queue drops the entry, counts it and marks the room for resync). The publisher writes
  the queue in order, one pipeline (no transaction) per batch, so the entries of one node in
  one room keep their order.
- **Trimming.** Each ``XADD`` trims with ``MINID ~ <Redis now - retention_ms>``: memory is
  bounded by time, and no entry younger than the retention is trimmed, so a reader that
  keeps up never finds a gap. Redis takes one trim argument per ``XADD``, so the length cap
  (``max_len``) is a backstop applied by an ``XTRIM MAXLEN ~`` every `trim_every` entries a
  node writes to a room. Streams also expire `expire_ms` after their last write, so an
  abandoned room leaves nothing behind.
- **Gaps.** A room's position is checked (``XINFO STREAM``) when it may have fallen behind
  the trimming: before reading a room that was not read for half the retention (the reader
  was paused), and before delivering a read that filled a whole batch (a backlog: a cut by
  the length cap always leaves one, as `read_count` <= `max_len`). The check compares the
  count of entries this node consumed with the count the stream removed from its head
  (``entries-added - length``, Redis >= 7.0): more removed than consumed is a gap, and
  reading goes on from the first entry left. A stream that vanished or went backwards is a
  reset: reading goes on from its end. Every second the reader also asks Redis for its
  ``run_id`` (and its clock): a changed ``run_id`` means Redis restarted empty, and every
  followed room is re-read from the new stream's end and resynchronised. After any Redis
  error (reader or publisher) the node is unavailable: publishing drops (rooms marked), the
  reader retries with backoff (0.1 s doubling to 2 s), and once Redis answers again every
  followed room is checked and resynchronised. Loss and recovery are each logged once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError
from redis.typing import KeyT, StreamIdT

from rtc.cluster.entries import Entry, decode_entry, encode_entry
from rtc.cluster.keys import Keys
from rtc.ids import RoomKey

__all__ = ["RoomStreams", "StreamId", "parse_stream_id"]

logger = logging.getLogger(__name__)

# What a lost Redis looks like: redis-py's errors (its ConnectionError and TimeoutError are
# RedisErrors), a socket error, or our own deadline (anyio.fail_after raises TimeoutError).
_ERRORS = (RedisError, OSError, TimeoutError)

StreamId = tuple[int, int]
ZERO = b"0-0"

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


def parse_stream_id(value: bytes | str) -> StreamId:
    """``(milliseconds, sequence)`` of a stream entry id such as ``b"1700000000000-3"``.

    Raises:
        ValueError: not an entry id.
    """
    text = value.decode("ascii") if isinstance(value, bytes) else value
    milliseconds, separator, sequence = text.partition("-")
    if not (separator and milliseconds.isdigit() and sequence.isdigit()):
        raise ValueError(f"not a stream id: {text!r}")
    return int(milliseconds), int(sequence)


@dataclass(slots=True)
class _Room:
    """A followed room: where its reading stands."""

    name: str  # the stream's key
    position: bytes | None  # the last entry id consumed; None: not known yet (Redis down)
    consumed: int  # how many entries the stream had added up to `position` (entries-added)
    live_at: float  # monotonic: when a read or check last covered it
    lag_ms: int = 0  # how old its last entry was when read

    @property
    def position_id(self) -> StreamId:
        return parse_stream_id(self.position or ZERO)


@dataclass(frozen=True, slots=True)
class _Stream:
    """What ``XINFO STREAM`` says about a room's stream (None fields: it does not exist)."""

    last_id: bytes
    added: int | None  # entries-added (Redis >= 7.0)
    length: int
    first_id: bytes | None


def _judge(room: _Room, stream: _Stream | None, *, restarted: bool) -> bool:
    """Move `room` to where reading can safely go on; True when entries may be lost (gap)."""
    if restarted or room.position is None:
        if stream is None:
            room.position, room.consumed = ZERO, 0
        else:
            room.position, room.consumed = stream.last_id, stream.added or 0
        return True
    if stream is None:  # vanished (or expired): read the new one from its start
        gap = room.position != ZERO or room.consumed != 0
        room.position, room.consumed = ZERO, 0
        return gap
    position = room.position_id
    if parse_stream_id(stream.last_id) < position or (
        stream.added is not None and stream.added < room.consumed
    ):  # reset: read on from its end
        room.position, room.consumed = stream.last_id, stream.added or 0
        return True
    if stream.added is not None:
        removed = stream.added - stream.length
        gap = removed > room.consumed  # trimmed past what was read
    else:  # before Redis 7.0 there is no count: a position older than the first entry
        gap = stream.first_id is not None and parse_stream_id(stream.first_id) > position
    if gap:  # read on from the first entry left
        if stream.first_id is None:
            room.position, room.consumed = stream.last_id, stream.added or 0
        else:
            room.position = _before(parse_stream_id(stream.first_id))
            room.consumed = (stream.added or stream.length) - stream.length
    return gap


def _before(entry: StreamId) -> bytes:
    """The greatest id below `entry`: reading from it starts at `entry`."""
    milliseconds, sequence = entry
    if sequence > 0:
        return f"{milliseconds}-{sequence - 1}".encode()
    return f"{max(0, milliseconds - 1)}-{2**64 - 1}".encode() if milliseconds else ZERO


def _stream_info(info: Any) -> _Stream:
    first = info.get("first-entry")
    added = info.get("entries-added")
    last_id = info["last-generated-id"]
    return _Stream(
        last_id=last_id.encode() if isinstance(last_id, str) else bytes(last_id),
        added=int(added) if added is not None else None,
        length=int(info["length"]),
        first_id=first[0] if first else None,
    )


def _batches(reply: Any) -> Iterator[tuple[bytes, list[Any]]]:
    """``(stream name, [(id, fields), ...])`` from an XREAD reply, RESP2 or RESP3 shaped."""
    if not reply:
        return
    items = reply.items() if isinstance(reply, dict) else ((item[0], item[1]) for item in reply)
    for name, value in items:
        entries = value
        # redis-py wraps a RESP3 stream's entries in one more list.
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        yield (name if isinstance(name, bytes) else str(name).encode()), list(entries or [])


class RoomStreams:
    """This node's reading and writing of its rooms' streams.

    Args:
        redis: the client (``decode_responses=False``); the reader takes one connection of
            its pool for itself.
        keys: the key names.
        node_id: this node: entries it wrote are skipped when read.
        deliver: called with each entry of a followed room written by another node (and
            aimed at every node or at this one), in stream order. A plain callback: it must
            not block; what it raises is logged and counted.
        resync: called (same rules) for a followed room whose entries may have been lost.
        retention_ms: how long an entry stays in its stream at least.
        max_len: a cap on a stream's length (approximate), a backstop for bursts.
        block_ms: how long one XREAD waits; also how soon a newly followed room is read.
        queue_size: how many entries may wait to be published; more are dropped.
        batch_size: how many entries one pipeline writes at most.
        read_count: how many entries one XREAD returns per room at most.
        timeout_s: how long one Redis command may take beyond its blocking time.
        check_interval_s: how often Redis is asked whether it restarted.
        on_availability: called with False when Redis is lost and True when it is back.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        node_id: str,
        *,
        deliver: Callable[[RoomKey, Entry], None],
        resync: Callable[[RoomKey], None],
        retention_ms: int = 60_000,
        max_len: int = 100_000,
        block_ms: int = 100,
        queue_size: int = 10_000,
        batch_size: int = 500,
        read_count: int = 1_000,
        timeout_s: float = 5.0,
        check_interval_s: float = 1.0,
        on_availability: Callable[[bool], None] | None = None,
    ) -> None:
        for name, value in (
            ("retention_ms", retention_ms),
            ("max_len", max_len),
            ("block_ms", block_ms),
            ("queue_size", queue_size),
            ("batch_size", batch_size),
            ("read_count", read_count),
            ("timeout_s", timeout_s),
            ("check_interval_s", check_interval_s),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        if not node_id:
            raise ValueError("node_id must not be empty")
        self._redis = redis
        self._keys = keys
        self._node_id = node_id
        self._deliver = deliver
        self._resync = resync
        self._on_availability = on_availability
        self.retention_ms = retention_ms
        self.max_len = max_len
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.batch_size = batch_size
        # The length cap keeps at least `max_len` entries, so a batch no larger than that
        # is full whenever a cut by the cap went past the reader (see `_take`).
        self.read_count = min(read_count, max_len)
        self.timeout_s = timeout_s
        self.check_interval_s = check_interval_s
        self.trim_every = max(1, min(1_000, max_len // 10))
        self.expire_ms = max(2 * retention_ms, 60_000)

        # Figures for /metrics.
        self.entries_read = 0  # every entry read from a followed room's stream
        self.entries_delivered = 0  # of those, the ones handed to `deliver`
        self.entries_published = 0
        self.entries_dropped = 0  # queue full, Redis down, or refused by Redis
        self.malformed = 0
        self.resyncs = 0
        self.errors = 0  # Redis errors (each failed command or batch)
        self.callback_errors = 0  # exceptions raised by `deliver` or `resync`
        self.available = True

        self._rooms: dict[RoomKey, _Room] = {}
        self._names: dict[bytes, RoomKey] = {}
        self._pending: dict[RoomKey, anyio.Event] = {}  # follows waiting for their position
        self._queue: deque[tuple[RoomKey, dict[bytes, bytes]]] = deque()
        self._dirty: set[RoomKey] = set()  # rooms whose entries were dropped
        self._since_trim: dict[RoomKey, int] = {}
        self._in_flight: list[tuple[RoomKey, dict[bytes, bytes]]] | None = None
        self._write_scope: anyio.CancelScope | None = None
        self._run_id: str | None = None
        self._restart_pending = False
        self._clock_offset_ms: int | None = None  # Redis clock minus ours, once known
        self._next_check = 0.0
        self._lost_at = 0.0
        self._wake_reader = anyio.Event()
        self._wake_publisher = anyio.Event()
        self._back = anyio.Event()  # set while Redis is available

    # --- the front door ------------------------------------------------------------------

    def followed(self) -> list[RoomKey]:
        """The rooms being read."""
        return list(self._rooms)

    async def follow(self, key: RoomKey) -> None:
        """Read `key`'s stream from its current end on. Call it BEFORE loading the room's
        document: whatever is published after this returns is delivered.

        Never raises: when Redis does not answer, the room is followed from where its stream
        stands once Redis is back, and resynchronised then.
        """
        if key in self._rooms:
            return
        waiting = self._pending.get(key)
        if waiting is not None:  # a concurrent follow of the same room is taking its position
            with anyio.move_on_after(self.timeout_s):
                await waiting.wait()
            return
        ready = self._pending[key] = anyio.Event()
        room = _Room(self._keys.log(key), position=None, consumed=0, live_at=time.monotonic())
        try:
            if self.available:
                stream = await self._read_stream(room.name)
                _judge(room, stream, restarted=True)
        except _ERRORS as error:
            room.position = None  # taken, with a resync, when Redis answers again
            self._lost(error)
        finally:
            ready.set()
        if self._pending.get(key) is not ready:
            return  # unfollowed meanwhile
        del self._pending[key]
        self._rooms[key] = room
        self._names[room.name.encode()] = key
        self._wake_reader.set()

    def unfollow(self, key: RoomKey) -> None:
        """Stop reading `key`'s stream (what is still queued for it is still published)."""
        self._pending.pop(key, None)
        room = self._rooms.pop(key, None)
        if room is not None:
            self._names.pop(room.name.encode(), None)
        self._since_trim.pop(key, None)
        self._dirty.discard(key)

    def publish(self, key: RoomKey, kind: str, data: bytes, target: str | None = None) -> None:
        """Queue an entry for `key`'s stream. Never awaits, never raises.

        Dropped (counted, and the room resynchronised later) when the queue is full or Redis
        is known to be unavailable.
        """
        if not self.available or len(self._queue) >= self.queue_size:
            self.entries_dropped += 1
            self._dirty.add(key)
            return
        self._queue.append((key, encode_entry(Entry(self._node_id, kind, data, target))))
        self._wake_publisher.set()

    def lag_ms(self, key: RoomKey | None = None) -> int:
        """How old the last entry read was when it was read (Redis clock), for `key` or the
        most behind followed room; 0 when nothing was read."""
        if key is not None:
            room = self._rooms.get(key)
            return room.lag_ms if room is not None else 0
        return max((room.lag_ms for room in self._rooms.values()), default=0)

    def figures(self) -> dict[str, int | bool]:
        """Every counter, for /metrics."""
        return {
            "available": self.available,
            "rooms": len(self._rooms),
            "queued": len(self._queue),
            "lag_ms": self.lag_ms(),
            "entries_read": self.entries_read,
            "entries_delivered": self.entries_delivered,
            "entries_published": self.entries_published,
            "entries_dropped": self.entries_dropped,
            "malformed": self.malformed,
            "resyncs": self.resyncs,
            "errors": self.errors,
            "callback_errors": self.callback_errors,
        }

    # --- the lifecycle -------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read and publish until cancelled."""
        if self.available:
            self._back.set()
        async with anyio.create_task_group() as group:
            group.start_soon(self._read_loop)
            group.start_soon(self._publish_loop)
            task_status.started()

    # --- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reader = self._redis.client()  # one connection of its own: it blocks in XREAD
        try:
            while True:  # until cancelled
                if not self.available:
                    await self._recover()
                try:
                    await self._read_round(reader)
                except _ERRORS as error:
                    self._lost(error)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self.timeout_s):
                await reader.aclose()

    async def _read_round(self, reader: Redis) -> None:
        now = time.monotonic()
        if now >= self._next_check:
            await self._check_server()
        stale_after = self.retention_ms / 2000
        due = [
            key
            for key, room in self._rooms.items()
            if room.position is None or now - room.live_at > stale_after
        ]
        if due:
            for key in await self._check_rooms(due, restarted=False):
                self._call_resync(key)
        streams: dict[KeyT, StreamIdT] = {
            room.name: room.position for room in self._rooms.values() if room.position is not None
        }
        if not streams:
            self._wake_reader = anyio.Event()
            with anyio.move_on_after(self.check_interval_s):
                await self._wake_reader.wait()
            return
        started = time.monotonic()
        with anyio.fail_after(self.block_ms / 1000 + self.timeout_s):
            reply = await reader.xread(streams, count=self.read_count, block=self.block_ms)
        for name in streams:
            read = self._names.get(name.encode() if isinstance(name, str) else bytes(name))
            room = self._rooms.get(read) if read is not None else None
            if room is not None:
                room.live_at = started
        await self._take(reply)

    async def _take(self, reply: Any) -> None:
        batches: list[tuple[RoomKey, _Room, list[Any]]] = []
        for name, entries in _batches(reply):
            key = self._names.get(name)
            room = self._rooms.get(key) if key is not None else None
            if key is not None and room is not None and room.position is not None:
                batches.append((key, room, entries))
        # A full batch may follow a cut by the length cap (`max_len` >= `read_count`): check
        # before delivering it, so that nothing after a gap is applied as if continuous.
        full = [key for key, _, entries in batches if len(entries) >= self.read_count]
        gaps = await self._check_rooms(full, restarted=False) if full else set()
        malformed = self.malformed
        for key, room, entries in batches:
            if key in gaps:
                continue  # read again from the first entry left, after the resync below
            for entry_id, fields in entries:
                if self._rooms.get(key) is not room:
                    break  # unfollowed by a callback
                self._take_one(key, room, entry_id, fields)
        if self.malformed != malformed:
            logger.warning(
                "cluster streams: skipped %d malformed entries", self.malformed - malformed
            )
        for key in gaps:
            self._call_resync(key)

    def _take_one(self, key: RoomKey, room: _Room, entry_id: Any, fields: Any) -> None:
        try:
            position = parse_stream_id(entry_id)
        except (ValueError, TypeError, AttributeError):
            self.malformed += 1
            return
        if position <= room.position_id:
            return  # read before (the room was followed again while a read was under way)
        room.position = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
        room.consumed += 1
        self.entries_read += 1
        if self._clock_offset_ms is not None:
            now_ms = int(time.time() * 1000) + self._clock_offset_ms
            room.lag_ms = max(0, now_ms - position[0])
        try:
            entry = decode_entry(fields)
        except (ValueError, TypeError, AttributeError):
            self.malformed += 1
            return
        if entry.node == self._node_id:
            return
        if entry.target is not None and entry.target != self._node_id:
            return
        self.entries_delivered += 1
        try:
            self._deliver(key, entry)
        except Exception:
            self.callback_errors += 1
            logger.exception("cluster streams: delivering a %s entry of room %s failed",
                             entry.kind, key)

    async def _read_stream(self, name: str) -> _Stream | None:
        with anyio.fail_after(self.timeout_s):
            try:
                info = await self._redis.xinfo_stream(name)
            except ResponseError as error:
                if "no such key" in str(error).lower():
                    return None
                raise
        return _stream_info(info)

    async def _check_rooms(self, keys: Iterable[RoomKey], *, restarted: bool) -> set[RoomKey]:
        """Check (and move) the positions of `keys`; the rooms that may have lost entries."""
        rooms = [(key, self._rooms[key]) for key in keys if key in self._rooms]
        gaps: set[RoomKey] = set()
        for start in range(0, len(rooms), self.batch_size):
            chunk = rooms[start : start + self.batch_size]
            checked_at = time.monotonic()
            pipe = self._redis.pipeline(transaction=False)
            for _, room in chunk:
                pipe.xinfo_stream(room.name)
            with anyio.fail_after(self.timeout_s):
                results = await pipe.execute(raise_on_error=False)
            for (key, room), result in zip(chunk, results, strict=True):
                if self._rooms.get(key) is not room:
                    continue
                if isinstance(result, ResponseError) and "no such key" in str(result).lower():
                    stream = None
                elif isinstance(result, Exception):
                    raise result
                else:
                    stream = _stream_info(result)
                if _judge(room, stream, restarted=restarted):
                    gaps.add(key)
                room.live_at = checked_at
        return gaps

    async def _ask_server(self) -> bool:
        """Ask Redis for its clock and its run_id; True when the run_id changed (Redis
        restarted, empty: its streams are new) and the positions have not moved since."""
        self._next_check = time.monotonic() + self.check_interval_s
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.info("server")
        before = time.time()
        with anyio.fail_after(self.timeout_s):
            (seconds, micros), info = await pipe.execute()
        ours_ms = (before + time.time()) * 500
        self._clock_offset_ms = int(int(seconds) * 1000 + int(micros) / 1000 - ours_ms)
        run_id = str(info.get("run_id", ""))
        if self._run_id is not None and run_id != self._run_id:
            # Stays set until every position has moved, whatever fails in between.
            self._restart_pending = True
        self._run_id = run_id
        return self._restart_pending

    async def _check_server(self) -> None:
        if await self._ask_server():
            logger.warning(
                "cluster streams: Redis restarted (new run_id): resynchronising %d rooms",
                len(self._rooms),
            )
            await self._check_rooms(list(self._rooms), restarted=True)
            self._restart_pending = False
            self._resync_all()

    async def _recover(self) -> None:
        """Until Redis answers: back off, then check every room and resynchronise them."""
        delay = BACKOFF_FIRST_S
        restarted = False
        while True:  # until Redis answers, or cancelled
            try:
                restarted = await self._ask_server()
                await self._check_rooms(list(self._rooms), restarted=restarted)
                self._restart_pending = False
                break
            except _ERRORS as error:
                logger.debug("cluster streams: Redis still unavailable: %s", error)
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self.available = True
        self._back.set()
        logger.warning(
            "cluster streams: Redis answers again after %.1f s%s: resynchronising %d rooms",
            time.monotonic() - self._lost_at,
            " (it restarted empty)" if restarted else "",
            len(self._rooms),
        )
        self._notify(True)
        self._resync_all()

    # --- publishing ----------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:  # until cancelled
            if not self._queue:
                self._wake_publisher = anyio.Event()
                await self._wake_publisher.wait()
                continue
            if not self.available:
                self._drop_queue()
                await self._back.wait()
                continue
            count = min(len(self._queue), self.batch_size)
            await self._write([self._queue.popleft() for _ in range(count)])

    async def _write(self, batch: list[tuple[RoomKey, dict[bytes, bytes]]]) -> None:
        minid = self._minid()
        pipe = self._redis.pipeline(transaction=False)
        names: dict[str, None] = {}
        trims: list[str] = []
        for key, fields in batch:
            name = self._keys.log(key)
            names[name] = None
            if minid is None:
                pipe.xadd(name, fields)  # type: ignore[arg-type]
            else:
                pipe.xadd(name, fields, minid=minid, approximate=True)  # type: ignore[arg-type]
            if key in self._rooms:  # (a room only written to, a kick, is seldom written)
                since = self._since_trim.get(key, 0) + 1
                if since >= self.trim_every:
                    trims.append(name)
                    since = 0
                self._since_trim[key] = since
        for name in trims:
            pipe.xtrim(name, maxlen=self.max_len, approximate=True)
        for name in names:
            pipe.pexpire(name, self.expire_ms)
        self._in_flight = batch
        try:
            with anyio.CancelScope() as self._write_scope, anyio.fail_after(self.timeout_s):
                results = await pipe.execute(raise_on_error=False)
        except _ERRORS as error:
            if self._in_flight is batch:
                self._in_flight = None
                self._drop(batch)
            self._lost(error)
            return
        finally:
            self._write_scope = None
        if self._in_flight is not batch:
            return  # dropped by `_lost` while under way: nothing from before a loss lands later
        self._in_flight = None
        refused = 0
        for (key, _), result in zip(batch, results, strict=False):
            if isinstance(result, Exception):
                refused += 1
                self._dirty.add(key)
            else:
                self.entries_published += 1
        if refused:
            self.entries_dropped += refused
            self.errors += 1
            logger.warning("cluster streams: Redis refused %d entries", refused)
        dirty, self._dirty = self._dirty, set()
        for key in dirty:
            if key in self._rooms:
                self._call_resync(key)

    def _minid(self) -> int | None:
        """Where trimming stops (Redis clock): None until Redis's clock is known."""
        if self._clock_offset_ms is None:
            return None
        return max(0, int(time.time() * 1000) + self._clock_offset_ms - self.retention_ms)

    # --- availability --------------------------------------------------------------------

    def _lost(self, error: BaseException) -> None:
        self.errors += 1
        if not self.available:
            return
        self.available = False
        self._lost_at = time.monotonic()
        self._back = anyio.Event()
        logger.warning(
            "cluster streams: Redis unavailable (%s: %s): publishing paused, rooms resync "
            "when it answers", type(error).__name__, error,
        )
        if self._in_flight is not None:
            self._drop(self._in_flight)
            self._in_flight = None
        if self._write_scope is not None:
            self._write_scope.cancel()
        self._drop_queue()
        self._wake_reader.set()
        self._wake_publisher.set()
        self._notify(False)

    def _drop_queue(self) -> None:
        """Drop what waits to be published (queued before the loss was known); its rooms
        are resynchronised when Redis is back."""
        self._drop(self._queue)
        self._queue.clear()

    def _drop(self, batch: Iterable[tuple[RoomKey, dict[bytes, bytes]]]) -> None:
        for key, _ in batch:
            self.entries_dropped += 1
            self._dirty.add(key)

    def _notify(self, available: bool) -> None:
        if self._on_availability is not None:
            try:
                self._on_availability(available)
            except Exception:
                self.callback_errors += 1
                logger.exception("cluster streams: the availability callback failed")

    def _resync_all(self) -> None:
        self._dirty.clear()
        for key in list(self._rooms):
            if key in self._rooms:
                self._call_resync(key)

    def _call_resync(self, key: RoomKey) -> None:
        self.resyncs += 1
        try:
            self._resync(key)
        except Exception:
            self.callback_errors += 1
            logger.exception("cluster streams: resynchronising room %s failed", key)
