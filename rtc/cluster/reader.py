"""The reading half of the rooms' logs: one task reading every followed room's Redis stream,
checking its position for gaps and Redis for restarts. Not the writing: that is
`rtc.cluster.publisher`; `rtc.cluster.streams` puts the two together.

- **Reading.** One blocking ``XREAD`` over every followed room's stream, on a connection of
  its own (a lean `rtc.cluster.wire.Wire`: this loop runs once per batch of entries, so
  hundreds of times a second on a busy node), ``block_ms`` at a time, so that a newly
  followed room joins the read within ``block_ms``. Entries written by this node, and
  entries aimed (``t``) at another node, are skipped (this node's own before decoding);
  malformed ones are counted and skipped; ``deliver(key, entry)`` gets the rest, in stream
  order.
- **Holders.** Every node that wrote an entry to a followed room's stream since this node
  followed it is taken to hold the room, until it writes a ``left`` entry (which is not
  delivered). `shared(key)` says whether another node holds the room; `joined(key)` is
  called when one is first heard of (unless by its ``sync``, which this node answers).
- **Gaps.** A room's position is checked (``XINFO STREAM``, judged by
  `rtc.cluster.positions.judge`) when it may have fallen behind the trimming: before reading
  a room that was not read for half the retention (the reader was paused), and before
  delivering a read that filled a whole batch (a backlog: a cut by the length cap always
  leaves one, as `read_count` <= `max_len`).
- **Restarts.** Every `check_interval_s` the reader also asks Redis for its ``run_id`` (and
  its clock): a changed ``run_id`` means Redis restarted empty, and every followed room is
  re-read from the new stream's end and resynchronised.
- **Recovery.** While Redis is unavailable the reader retries with backoff (0.1 s doubling
  to 2 s); once Redis answers again every followed room is checked, then `back` is called.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from rtc.cluster.entries import LEFT, NODE, SYNC, Entry, decode_entry, decode_flat
from rtc.cluster.keys import Keys
from rtc.cluster.positions import RoomPosition, StreamInfo, judge, parse_stream_id, read_batches
from rtc.cluster.publisher import REDIS_ERRORS
from rtc.cluster.wire import Wire, pack
from rtc.ids import RoomKey

__all__ = ["BACKOFF_FIRST_S", "BACKOFF_MAX_S", "RoomReader"]

logger = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0


class RoomReader:
    """The followed rooms' positions, and the task that reads their streams.

    Callbacks are plain functions that must not block. `deliver` (what it raises is logged
    and counted); `resync(key)`: entries of a followed room may be lost; `resync_all()`:
    Redis restarted, every followed room must be resynchronised; `lost(error)`: a Redis
    error; `back(restarted)`: Redis answers again (after `available()` turned False) and
    every position was checked; `available()`: whether Redis is believed to answer.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        node_id: str,
        *,
        deliver: Callable[[RoomKey, Entry], None],
        resync: Callable[[RoomKey], None],
        resync_all: Callable[[], None],
        lost: Callable[[BaseException], None],
        back: Callable[[bool], None],
        available: Callable[[], bool],
        joined: Callable[[RoomKey], None] | None = None,
        retention_ms: int,
        block_ms: int,
        batch_size: int,
        read_count: int,
        timeout_s: float,
        check_interval_s: float,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._node_id = node_id
        self._node = node_id.encode()
        self._deliver = deliver
        self._resync = resync
        self._resync_all = resync_all
        self._lost = lost
        self._back = back
        self._available = available
        self._joined = joined
        self.retention_ms = retention_ms
        self.block_ms = block_ms
        self.batch_size = batch_size
        self.read_count = read_count
        self.timeout_s = timeout_s
        self.check_interval_s = check_interval_s

        self.entries_read = 0  # every entry read from a followed room's stream
        self.entries_delivered = 0  # of those, the ones handed to `deliver`
        self.malformed = 0
        self.callback_errors = 0  # exceptions raised by `deliver`

        self._rooms: dict[RoomKey, RoomPosition] = {}
        self._names: dict[bytes, RoomKey] = {}
        self._holders: dict[RoomKey, set[str]] = {}  # other nodes heard of, per room
        self._pending: dict[RoomKey, anyio.Event] = {}  # follows waiting for their position
        self._run_id: str | None = None
        self._restart_pending = False
        self._clock_offset_ms: int | None = None  # Redis clock minus ours, once known
        self._next_check = 0.0
        self._wake = anyio.Event()
        self._wire: Wire | None = None
        self._bulk_names: dict[str, bytes] = {}
        self._xread_head = (0, 0, b"")

    # --- the rooms -----------------------------------------------------------------------

    def followed(self) -> list[RoomKey]:
        """The rooms being read."""
        return list(self._rooms)

    def follows(self, key: RoomKey) -> bool:
        """Whether `key` is being read."""
        return key in self._rooms

    async def follow(self, key: RoomKey) -> None:
        """Read `key`'s stream from its current end on (see `RoomStreams.follow`)."""
        if key in self._rooms:
            return
        waiting = self._pending.get(key)
        if waiting is not None:  # a concurrent follow of the same room is taking its position
            with anyio.move_on_after(self.timeout_s):
                await waiting.wait()
            return
        ready = self._pending[key] = anyio.Event()
        room = RoomPosition(
            self._keys.log(key), position=None, consumed=0, live_at=time.monotonic()
        )
        try:
            if self._available():
                stream = await self._read_stream(room.name)
                judge(room, stream, restarted=True)
        except REDIS_ERRORS as error:
            room.position = None  # taken, with a resync, when Redis answers again
            self._lost(error)
        finally:
            ready.set()
        if self._pending.get(key) is not ready:
            return  # unfollowed meanwhile
        del self._pending[key]
        self._rooms[key] = room
        self._names[room.name.encode()] = key
        self._holders[key] = set()
        self._wake.set()

    def unfollow(self, key: RoomKey) -> None:
        """Stop reading `key`'s stream."""
        self._pending.pop(key, None)
        room = self._rooms.pop(key, None)
        self._holders.pop(key, None)
        if room is not None:
            self._names.pop(room.name.encode(), None)

    def shared(self, key: RoomKey) -> bool:
        """Whether another node is known to hold `key` (it wrote to its stream since this
        node followed it, and has not left)."""
        return bool(self._holders.get(key))

    def lag_ms(self, key: RoomKey | None = None) -> int:
        """How old the last entry read was when it was read (Redis clock), for `key` or the
        most behind followed room; 0 when nothing was read."""
        if key is not None:
            room = self._rooms.get(key)
            return room.lag_ms if room is not None else 0
        return max((room.lag_ms for room in self._rooms.values()), default=0)

    def redis_now_ms(self) -> int | None:
        """Redis's clock, None until it was asked."""
        if self._clock_offset_ms is None:
            return None
        return int(time.time() * 1000) + self._clock_offset_ms

    def wake(self) -> None:
        """Cut a wait for something to read short (Redis was lost)."""
        self._wake.set()

    # --- reading -------------------------------------------------------------------------

    async def run(self) -> None:
        """Read until cancelled."""
        try:
            while True:  # until cancelled
                if not self._available():
                    await self._recover()
                try:
                    await self._read_round()
                except REDIS_ERRORS as error:
                    self._close_wire()
                    self._lost(error)
        finally:
            self._close_wire()

    def _close_wire(self) -> None:
        if self._wire is not None:
            self._wire.close()
            self._wire = None

    async def _read_round(self) -> None:
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
                self._resync(key)
        reading = [room for room in self._rooms.values() if room.position is not None]
        if not reading:
            self._wake = anyio.Event()
            with anyio.move_on_after(self.check_interval_s):
                await self._wake.wait()
            return
        command = b"".join([
            b"*%d\r\n" % (6 + 2 * len(reading)),
            self._xread_prefix(),
            *[self._bulk_name(room.name) for room in reading],
            *[b"$%d\r\n%b\r\n" % (len(p), p) for p in [r.position or b"" for r in reading]],
        ])
        wire = self._wire
        if wire is None or wire.closed:
            wire = self._wire = await Wire.open(self._redis, self.timeout_s)
        started = time.monotonic()
        (reply,) = await wire.send([command], self.block_ms / 1000 + self.timeout_s)
        if isinstance(reply, ResponseError):
            raise reply
        for room in reading:
            room.live_at = started
        await self._take(reply)

    async def _take(self, reply: Any) -> None:
        batches: list[tuple[RoomKey, RoomPosition, list[Any]]] = []
        for name, entries in read_batches(reply):
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
            self._take_batch(key, room, entries)
        if self.malformed != malformed:
            logger.warning(
                "cluster streams: skipped %d malformed entries", self.malformed - malformed
            )
        for key in gaps:
            self._resync(key)

    def _xread_prefix(self) -> bytes:
        """``XREAD COUNT c BLOCK b STREAMS``, packed once (without the array's length)."""
        count, block, packed = self._xread_head
        if (count, block) != (self.read_count, self.block_ms):
            count, block = self.read_count, self.block_ms
            packed = pack("XREAD", "COUNT", count, "BLOCK", block, "STREAMS")[len(b"*6\r\n") :]
            self._xread_head = (count, block, packed)
        return packed

    def _bulk_name(self, name: str) -> bytes:
        """A stream's name as a RESP bulk string (kept: every XREAD names every room)."""
        bulk = self._bulk_names.get(name)
        if bulk is None:
            if len(self._bulk_names) > len(self._rooms) + 1024:
                self._bulk_names.clear()  # rooms long unfollowed
            bulk = self._bulk_names[name] = pack(name)[len(b"*1\r\n") :]
        return bulk

    def _take_batch(self, key: RoomKey, room: RoomPosition, entries: list[Any]) -> None:
        """Deliver one room's entries of a read, in order."""
        last = room.position_id
        for item in entries:
            if self._rooms.get(key) is not room:
                break  # unfollowed by a callback
            try:
                entry_id, fields = item
                position = parse_stream_id(entry_id)
            except (ValueError, TypeError, AttributeError):
                self.malformed += 1
                continue
            if position <= last:
                continue  # read before (the room was followed again while a read was under way)
            last = position
            room.position = entry_id if isinstance(entry_id, bytes) else str(entry_id).encode()
            room.consumed += 1
            self.entries_read += 1
            self._take_one(key, fields)
        now_ms = self.redis_now_ms()
        if now_ms is not None and room.position is not None:
            room.lag_ms = max(0, now_ms - last[0])

    def _take_one(self, key: RoomKey, fields: Any) -> None:
        try:
            if isinstance(fields, dict):
                if fields.get(NODE) == self._node:
                    return  # this node's own
                entry = decode_entry(fields)
            elif len(fields) > 1 and fields[0] == NODE and fields[1] == self._node:
                return  # this node's own
            else:
                entry = decode_flat(fields)
        except (ValueError, TypeError, AttributeError):
            self.malformed += 1
            return
        if entry.node == self._node_id:
            return
        holders = self._holders.get(key)
        if entry.kind == LEFT:
            if holders is not None:
                holders.discard(entry.node)
            return
        if holders is not None and entry.node not in holders:
            holders.add(entry.node)
            if entry.kind != SYNC and self._joined is not None:
                self._call_joined(key)
        if entry.target is not None and entry.target != self._node_id:
            return
        self.entries_delivered += 1
        try:
            self._deliver(key, entry)
        except Exception:
            self.callback_errors += 1
            logger.exception(
                "cluster streams: delivering a %s entry of room %s failed", entry.kind, key
            )

    def _call_joined(self, key: RoomKey) -> None:
        assert self._joined is not None
        try:
            self._joined(key)
        except Exception:
            self.callback_errors += 1
            logger.exception("cluster streams: greeting a new holder of room %s failed", key)

    # --- checking ------------------------------------------------------------------------

    async def _read_stream(self, name: str) -> StreamInfo | None:
        with anyio.fail_after(self.timeout_s):
            try:
                info = await self._redis.xinfo_stream(name)
            except ResponseError as error:
                if "no such key" in str(error).lower():
                    return None
                raise
        return StreamInfo.from_reply(info)

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
                    stream = StreamInfo.from_reply(result)
                if judge(room, stream, restarted=restarted):
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
        """Until Redis answers: back off, then check every room and report it `back`."""
        delay = BACKOFF_FIRST_S
        restarted = False
        while True:  # until Redis answers, or cancelled
            try:
                restarted = await self._ask_server()
                await self._check_rooms(list(self._rooms), restarted=restarted)
                self._restart_pending = False
                self._close_wire()
                self._wire = await Wire.open(self._redis, self.timeout_s)
                break
            except REDIS_ERRORS as error:
                logger.debug("cluster streams: Redis still unavailable: %s", error)
                await anyio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        self._back(restarted)
