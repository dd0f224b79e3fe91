"""The rooms' logs in Redis: one Redis stream per room (``rtc:{blog:post}:log``), read by one
reader task and written by one publisher task per node. This module puts the two together;
they live in `rtc.cluster.reader` and `rtc.cluster.publisher`, and the position arithmetic
(ids, the gap decision, trimming) in `rtc.cluster.positions`, with no I/O.

This is the cross-node fan-out (issue 14, item 3). Streams rather than pub/sub: a reader has
a position per room, so nothing published while it reconnects is lost, and a gap it cannot
fill (the position was trimmed away, Redis restarted empty, a connection broke) is found and
reported as `resync(key)`: the caller then runs the sync exchange (``sync``/``reply``
entries) that recovers the difference from the documents themselves.

- **Reading** (`RoomReader`): one blocking ``XREAD`` over every followed room's stream;
  entries of other nodes, aimed at every node or at this one, are delivered in stream order;
  positions are checked for gaps, and Redis for a restart, every `check_interval_s`.
- **Publishing** (`Publisher`): `publish` never awaits and never raises; a bounded queue is
  written in order by pipelined ``XADD`` that trims by age (``MINID ~``), with an
  ``XTRIM MAXLEN ~`` backstop, and streams expire once abandoned.
- **Alone.** With ``share_alone=False``, a room's ``update`` and ``awareness`` entries are
  not written while no other node is known to hold the room (see `RoomReader`): a node
  that holds a room alone (rooms hashed to nodes by the balancer) then costs Redis nothing
  per edit. Nothing is lost: a node that loads the room follows its stream first and then
  publishes a ``sync``, which every holder answers with what the newcomer lacks and its
  presence, and from then on writes to the stream; the newcomer, hearing of a holder,
  publishes its own presence (`joined`). A node that unfollows a room writes ``left``.
- **Availability.** After any Redis error (reader or publisher) the node is unavailable:
  publishing drops (rooms marked), the reader retries with backoff, and once Redis answers
  again every followed room is checked and resynchronised. Loss and recovery are each
  logged once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import anyio.abc
from redis.asyncio import Redis

from rtc.cluster.entries import AWARENESS, LEFT, UPDATE, Entry
from rtc.cluster.keys import Keys
from rtc.cluster.positions import StreamId, parse_stream_id
from rtc.cluster.publisher import Publisher
from rtc.cluster.reader import RoomReader
from rtc.ids import RoomKey

__all__ = ["RoomStreams", "StreamId", "parse_stream_id"]

logger = logging.getLogger(__name__)


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
        share_alone: whether updates and awareness are written while no other node is
            known to hold the room (see "Alone" above).
        joined: called with a room when another node is first heard to hold it (a plain
            callback, like `deliver`), so that this node can tell it its presence.
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
        share_alone: bool = True,
        joined: Callable[[RoomKey], None] | None = None,
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
        self._node_id = node_id
        self._resync = resync
        self._on_availability = on_availability
        self.share_alone = share_alone
        self.entries_unshared = 0  # updates and awareness not written: no other holder
        self.retention_ms = retention_ms
        self.max_len = max_len
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.batch_size = batch_size
        # The length cap keeps at least `max_len` entries, so a batch no larger than that
        # is full whenever a cut by the cap went past the reader (see `RoomReader._take`).
        self.read_count = min(read_count, max_len)
        self.timeout_s = timeout_s
        self.check_interval_s = check_interval_s

        # Figures for /metrics (the reader and the publisher count the rest).
        self.resyncs = 0
        self._errors = 0  # Redis errors: each failed command or batch
        self._callback_errors = 0  # exceptions raised by `resync` or `on_availability`
        self.available = True
        self._lost_at = 0.0

        self._reader = RoomReader(
            redis,
            keys,
            node_id,
            deliver=deliver,
            resync=self._call_resync,
            resync_all=self._resync_all,
            lost=self._lost,
            back=self._back,
            available=lambda: self.available,
            joined=joined,
            retention_ms=retention_ms,
            block_ms=block_ms,
            batch_size=batch_size,
            read_count=self.read_count,
            timeout_s=timeout_s,
            check_interval_s=check_interval_s,
        )
        self._publisher = Publisher(
            redis,
            keys,
            queue_size=queue_size,
            batch_size=batch_size,
            max_len=max_len,
            retention_ms=retention_ms,
            timeout_s=timeout_s,
            redis_now_ms=self._reader.redis_now_ms,
            followed=self._reader.follows,
            resync=self._call_resync,
            lost=self._lost,
        )
        self.trim_every = self._publisher.trim_every
        self.expire_ms = self._publisher.expire_ms

    # --- the front door ------------------------------------------------------------------

    def followed(self) -> list[RoomKey]:
        """The rooms being read."""
        return self._reader.followed()

    async def follow(self, key: RoomKey) -> None:
        """Read `key`'s stream from its current end on. Call it BEFORE loading the room's
        document: whatever is published after this returns is delivered.

        Never raises: when Redis does not answer, the room is followed from where its stream
        stands once Redis is back, and resynchronised then.
        """
        await self._reader.follow(key)

    def unfollow(self, key: RoomKey) -> None:
        """Stop reading `key`'s stream (what is still queued for it is still published)."""
        if not self.share_alone and self._reader.follows(key):
            self.publish(key, LEFT, b"")
        self._reader.unfollow(key)
        self._publisher.forget(key)

    def publish(self, key: RoomKey, kind: str, data: bytes, target: str | None = None) -> None:
        """Queue an entry for `key`'s stream. Never awaits, never raises.

        Dropped (counted, and the room resynchronised later) when the queue is full or Redis
        is known to be unavailable. Not written (counted) when it is an update or awareness
        of a room no other node is known to hold, unless `share_alone`.
        """
        if (
            not self.share_alone
            and kind in (UPDATE, AWARENESS)
            and not self._reader.shared(key)
        ):
            self.entries_unshared += 1
            return
        self._publisher.publish(key, Entry(self._node_id, kind, data, target))

    def shared(self, key: RoomKey) -> bool:
        """Whether another node is known to hold `key`."""
        return self._reader.shared(key)

    def lag_ms(self, key: RoomKey | None = None) -> int:
        """How old the last entry read was when it was read (Redis clock), for `key` or the
        most behind followed room; 0 when nothing was read."""
        return self._reader.lag_ms(key)

    # --- the figures ---------------------------------------------------------------------

    @property
    def entries_read(self) -> int:
        """Every entry read from a followed room's stream."""
        return self._reader.entries_read

    @property
    def entries_delivered(self) -> int:
        """Of the entries read, the ones handed to `deliver`."""
        return self._reader.entries_delivered

    @property
    def malformed(self) -> int:
        """Entries read that could not be decoded."""
        return self._reader.malformed

    @property
    def entries_published(self) -> int:
        """Entries written to Redis."""
        return self._publisher.entries_published

    @property
    def entries_dropped(self) -> int:
        """Entries not written: queue full, Redis down, or refused by Redis."""
        return self._publisher.entries_dropped

    @property
    def errors(self) -> int:
        """Redis errors: each failed command or batch, and each batch Redis refused."""
        return self._errors + self._publisher.refusals

    @property
    def callback_errors(self) -> int:
        """Exceptions raised by `deliver`, `resync` or `on_availability`."""
        return self._callback_errors + self._reader.callback_errors

    def figures(self) -> dict[str, int | bool]:
        """Every counter, for /metrics."""
        return {
            "available": self.available,
            "rooms": len(self._reader.followed()),
            "queued": self._publisher.queued,
            "lag_ms": self.lag_ms(),
            "entries_read": self.entries_read,
            "entries_delivered": self.entries_delivered,
            "entries_published": self.entries_published,
            "entries_dropped": self.entries_dropped,
            "entries_unshared": self.entries_unshared,
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
        async with anyio.create_task_group() as group:
            group.start_soon(self._reader.run)
            group.start_soon(self._publisher.run)
            task_status.started()

    # --- availability --------------------------------------------------------------------

    def _lost(self, error: BaseException) -> None:
        self._errors += 1
        if not self.available:
            return
        self.available = False
        self._lost_at = time.monotonic()
        logger.warning(
            "cluster streams: Redis unavailable (%s: %s): publishing paused, rooms resync "
            "when it answers",
            type(error).__name__,
            error,
        )
        self._publisher.pause()
        self._reader.wake()
        self._notify(False)

    def _back(self, restarted: bool) -> None:
        self.available = True
        self._publisher.resume()
        logger.warning(
            "cluster streams: Redis answers again after %.1f s%s: resynchronising %d rooms",
            time.monotonic() - self._lost_at,
            " (it restarted empty)" if restarted else "",
            len(self._reader.followed()),
        )
        self._notify(True)
        self._resync_all()

    def _notify(self, available: bool) -> None:
        if self._on_availability is not None:
            try:
                self._on_availability(available)
            except Exception:
                self._callback_errors += 1
                logger.exception("cluster streams: the availability callback failed")

    def _resync_all(self) -> None:
        self._publisher.clear_marks()
        for key in self._reader.followed():
            if self._reader.follows(key):
                self._call_resync(key)

    def _call_resync(self, key: RoomKey) -> None:
        self.resyncs += 1
        try:
            self._resync(key)
        except Exception:
            self._callback_errors += 1
            logger.exception("cluster streams: resynchronising room %s failed", key)
