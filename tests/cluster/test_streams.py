"""The rooms' streams against a real Redis: fan-out in order without echo, targets, following
from now on, gaps (trimmed, a cut by the length cap, Redis restarted) reported as resyncs,
and what cannot be read or written counted, never raised."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from rtc.cluster.entries import Entry
from rtc.cluster.keys import Keys
from rtc.cluster.positions import RoomPosition, StreamInfo, judge, parse_stream_id
from rtc.cluster.streams import RoomStreams
from rtc.ids import RoomKey
from tests.redis_fixtures import ThrowawayRedis, redis_server

__all__ = ["redis_server"]  # the fixture (tests/cluster/conftest.py has it too)

TIMEOUT = 10.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))
KEYS = Keys("test")
ROOM = RoomKey(1, 2)
OTHER = RoomKey(1, 3)


class Node:
    """A `RoomStreams` and what it was given: entries, resyncs, availability changes."""

    def __init__(
        self, client: redis.asyncio.Redis, node_id: str, *, fail: bool = False, **options: Any
    ) -> None:
        self.entries: list[tuple[RoomKey, Entry]] = []
        self.resynced: list[RoomKey] = []
        self.availability: list[bool] = []
        self._fail = fail
        self._changed = anyio.Event()
        self.streams = RoomStreams(
            client,
            KEYS,
            node_id,
            deliver=self._deliver,
            resync=self._resync,
            on_availability=self._available,
            **options,
        )

    def data(self, key: RoomKey = ROOM) -> list[bytes]:
        return [entry.data for room, entry in self.entries if room == key]

    def _deliver(self, key: RoomKey, entry: Entry) -> None:
        self.entries.append((key, entry))
        self._changed.set()
        if self._fail:
            raise RuntimeError("a failing callback")

    def _resync(self, key: RoomKey) -> None:
        self.resynced.append(key)
        self._changed.set()

    def _available(self, available: bool) -> None:
        self.availability.append(available)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Until `condition` holds, re-checked after each callback."""
        with anyio.fail_after(TIMEOUT):
            while not condition():  # bounded by the deadline
                self._changed = anyio.Event()
                await self._changed.wait()


@asynccontextmanager
async def client_of(server: ThrowawayRedis) -> AsyncIterator[redis.asyncio.Redis]:
    # Few quick retries, so that a stopped Redis shows within a fraction of a second.
    client = redis.asyncio.Redis.from_url(
        server.url,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
        socket_connect_timeout=1,
    )
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def running(*nodes: Node) -> AsyncIterator[None]:
    async with anyio.create_task_group() as group:
        for node in nodes:
            await group.start(node.streams.run)
        yield
        group.cancel_scope.cancel()


def numbered(count: int) -> list[bytes]:
    return [str(number).encode() for number in range(count)]


async def test_two_nodes_exchange_a_room_in_order_without_echo(
    redis_server: ThrowawayRedis,
) -> None:
    async with client_of(redis_server) as client:
        a, b = Node(client, "a"), Node(client, "b")
        async with running(a, b):
            await a.streams.follow(ROOM)
            await b.streams.follow(ROOM)
            for data in numbered(1000):
                a.streams.publish(ROOM, "update", data)
            b.streams.publish(ROOM, "awareness", b"from b")
            await b.wait_for(lambda: len(b.entries) == 1000)
            await a.wait_for(lambda: len(a.entries) == 1)
            # A barrier: once b has read a's entry written after everything above, b has
            # read its own entry too (and skipped it).
            a.streams.publish(ROOM, "update", b"barrier")
            await b.wait_for(lambda: b"barrier" in b.data())
        assert b.data() == [*numbered(1000), b"barrier"]
        assert {entry.node for _, entry in b.entries} == {"a"}
        assert a.entries == [(ROOM, Entry("b", "awareness", b"from b"))]
        # The barrier may be read before a's publisher counts it.
        assert a.streams.entries_published >= 1000
        assert b.streams.entries_read == 1002
        assert b.streams.entries_delivered == 1001
        assert (a.streams.resyncs, b.streams.resyncs) == (0, 0)
        assert a.streams.available
        assert b.streams.available
        assert 0 <= b.streams.lag_ms() < TIMEOUT * 1000


async def test_a_room_held_alone_writes_no_update_until_another_node_holds_it(
    redis_server: ThrowawayRedis,
) -> None:
    async with client_of(redis_server) as client:
        joined: dict[str, list[RoomKey]] = {"a": [], "b": []}
        a, b = (
            Node(client, name, share_alone=False, joined=joined[name].append)
            for name in ("a", "b")
        )
        async with running(a, b):
            await a.streams.follow(ROOM)
            await b.streams.follow(ROOM)
            a.streams.publish(ROOM, "update", b"alone")  # nobody else holds the room
            a.streams.publish(ROOM, "awareness", b"alone")
            assert a.streams.entries_unshared == 2
            assert not a.streams.shared(ROOM)
            b.streams.publish(ROOM, "sync", b"vector")  # b loaded the room: a answers it
            await a.wait_for(lambda: a.data() == [b"vector"])
            assert a.streams.shared(ROOM)
            assert joined["a"] == []  # the answer to the sync carries a's presence
            a.streams.publish(ROOM, "update", b"shared")
            await b.wait_for(lambda: b.data() == [b"shared"])
            assert joined["b"] == [ROOM]  # b heard of a: it tells a its presence
            b.streams.unfollow(ROOM)  # writes `left`
            with anyio.fail_after(TIMEOUT):
                # (`left` reaches no callback: a's reader is polled until it read it)
                while a.streams.entries_read < 3:  # noqa: ASYNC110 - bounded by the deadline
                    await anyio.sleep(0.01)  # noqa: sleep-ok - polls a's reader for the `left`
            assert not a.streams.shared(ROOM)
            a.streams.publish(ROOM, "update", b"alone again")
            assert a.streams.entries_unshared == 3
        assert a.data() == [b"vector"]  # `left` is not delivered
        written: Any = await client.xrange(KEYS.log(ROOM))
        assert [(fields[b"n"], fields[b"k"]) for _, fields in written] == [
            (b"b", b"sync"), (b"a", b"update"), (b"b", b"left"),
        ]


async def test_a_target_entry_reaches_only_its_target(redis_server: ThrowawayRedis) -> None:
    async with client_of(redis_server) as client:
        a, b, c = Node(client, "a"), Node(client, "b"), Node(client, "c")
        async with running(a, b, c):
            for node in (a, b, c):
                await node.streams.follow(ROOM)
            a.streams.publish(ROOM, "reply", b"for b", target="b")
            a.streams.publish(ROOM, "replaced", b"7", target="c")
            a.streams.publish(ROOM, "sync", b"for all")
            await b.wait_for(lambda: b"for all" in b.data())
            await c.wait_for(lambda: b"for all" in c.data())
        assert b.entries == [
            (ROOM, Entry("a", "reply", b"for b", "b")),
            (ROOM, Entry("a", "sync", b"for all")),
        ]
        assert c.entries == [
            (ROOM, Entry("a", "replaced", b"7", "c")),
            (ROOM, Entry("a", "sync", b"for all")),
        ]


async def test_a_room_followed_later_sees_only_later_entries(
    redis_server: ThrowawayRedis,
) -> None:
    async with client_of(redis_server) as client:
        a, b, watcher = Node(client, "a"), Node(client, "b"), Node(client, "watcher")
        async with running(a, b, watcher):
            await watcher.streams.follow(ROOM)
            await watcher.streams.follow(OTHER)
            for data in numbered(5):
                a.streams.publish(ROOM, "update", data)
            await watcher.wait_for(lambda: len(watcher.entries) == 5)  # they are in Redis
            await b.streams.follow(ROOM)
            a.streams.publish(OTHER, "update", b"another room")
            a.streams.publish(ROOM, "update", b"later")
            await watcher.wait_for(lambda: len(watcher.entries) == 7)
            await b.wait_for(lambda: len(b.entries) == 1)
            assert b.streams.followed() == [ROOM]
            b.streams.unfollow(ROOM)
            a.streams.publish(ROOM, "update", b"after unfollow")
            await watcher.wait_for(lambda: len(watcher.entries) == 8)
        assert b.entries == [(ROOM, Entry("a", "update", b"later"))]
        assert b.streams.followed() == []


async def test_malformed_entries_and_failing_callbacks_are_counted_and_skipped(
    redis_server: ThrowawayRedis,
) -> None:
    async with client_of(redis_server) as client:
        a, b = Node(client, "a"), Node(client, "b", fail=True)
        async with running(a, b):
            await b.streams.follow(ROOM)
            name = KEYS.log(ROOM)
            await client.xadd(name, {b"n": b"x", b"k": b"bogus", b"d": b""})
            await client.xadd(name, {b"garbage": b"1"})
            await client.xadd(name, {b"n": b"x", b"k": b"reply", b"d": b""})  # no target
            a.streams.publish(ROOM, "update", b"one")
            a.streams.publish(ROOM, "update", b"two")
            await b.wait_for(lambda: len(b.entries) == 2)
        assert b.data() == [b"one", b"two"]
        assert b.streams.malformed == 3
        assert b.streams.callback_errors == 2
        assert b.streams.entries_read == 5


async def test_a_position_trimmed_away_is_resynchronised(redis_server: ThrowawayRedis) -> None:
    async with client_of(redis_server) as client:
        a, watcher = Node(client, "a"), Node(client, "watcher")
        # b follows but does not read (a paused node); its retention says its position is
        # to be checked as soon as it reads again.
        b = Node(client, "b", retention_ms=1)
        await b.streams.follow(ROOM)
        async with running(a, watcher):
            await watcher.streams.follow(ROOM)
            for data in numbered(10):
                a.streams.publish(ROOM, "update", data)
            await watcher.wait_for(lambda: len(watcher.entries) == 10)
            await client.xtrim(KEYS.log(ROOM), maxlen=2, approximate=False)
            async with running(b):
                await b.wait_for(lambda: ROOM in b.resynced)
                a.streams.publish(ROOM, "update", b"later")
                await b.wait_for(lambda: b"later" in b.data())
        # What was left after the cut is delivered; nothing before it pretends to be whole.
        assert b.data() == [b"8", b"9", b"later"]
        assert b.resynced == [ROOM]


async def test_the_length_cap_bounds_a_stream_and_a_reader_it_cut_resyncs(
    redis_server: ThrowawayRedis,
) -> None:
    async with client_of(redis_server) as client:
        a = Node(client, "a", max_len=10, batch_size=100)
        b = Node(client, "b", max_len=10)
        async with running(a, b):
            await a.streams.follow(ROOM)
            await b.streams.follow(ROOM)
            for data in numbered(3000):
                a.streams.publish(ROOM, "update", data)
            await b.wait_for(lambda: b"2999" in b.data())
            length = await client.xlen(KEYS.log(ROOM))
        assert a.streams.entries_published == 3000
        # Approximate trimming removes whole nodes of 100 entries: far below what was written.
        assert length <= 300
        received = [int(data) for data in b.data()]
        assert received == sorted(received)
        # Never a silent loss: either everything arrived, or the room was resynchronised.
        assert len(received) == 3000 or ROOM in b.resynced


async def test_a_full_queue_drops_and_resynchronises(redis_server: ThrowawayRedis) -> None:
    async with client_of(redis_server) as client:
        a, b = Node(client, "a", queue_size=3), Node(client, "b")
        await a.streams.follow(ROOM)
        await b.streams.follow(ROOM)
        for data in numbered(5):
            a.streams.publish(ROOM, "update", data)
        async with running(a, b):
            await a.wait_for(lambda: a.resynced == [ROOM])
            await b.wait_for(lambda: len(b.entries) == 3)
        assert b.data() == numbered(3)
        assert (a.streams.entries_dropped, a.streams.entries_published) == (2, 3)


async def test_redis_lost_and_restarted_empty(redis_server: ThrowawayRedis) -> None:
    async with client_of(redis_server) as client:
        a, b = Node(client, "a"), Node(client, "b")
        async with running(a, b):
            await a.streams.follow(ROOM)
            await b.streams.follow(ROOM)
            a.streams.publish(ROOM, "update", b"before")
            await b.wait_for(lambda: b.data() == [b"before"])

            redis_server.stop()
            for data in numbered(10):
                a.streams.publish(ROOM, "update", data)  # never raises
            await a.wait_for(lambda: a.availability == [False])
            await b.wait_for(lambda: b.availability == [False])
            b.streams.publish(ROOM, "update", b"while down")
            await a.streams.follow(OTHER)  # never raises: followed once Redis is back
            assert not a.streams.available
            assert a.streams.entries_dropped == 10
            assert b.streams.entries_dropped == 1

            redis_server.start()  # same port, empty
            await a.wait_for(lambda: set(a.resynced) == {ROOM, OTHER})
            await b.wait_for(lambda: b.resynced == [ROOM])
            assert a.availability == b.availability == [False, True]

            a.streams.publish(ROOM, "update", b"after")
            a.streams.publish(OTHER, "update", b"other room")
            b.streams.publish(ROOM, "update", b"after from b")
            await b.wait_for(lambda: b"after" in b.data())
            await a.wait_for(lambda: b"after from b" in a.data())
        assert b.data() == [b"before", b"after"]
        assert a.data() == [b"after from b"]
        assert a.streams.errors >= 1
        assert b.streams.errors >= 1


@pytest.mark.slow
async def test_a_quick_restart_is_noticed_by_its_run_id(redis_server: ThrowawayRedis) -> None:
    async with client_of(redis_server) as client:
        a = Node(client, "a", check_interval_s=0.05)
        b = Node(client, "b", check_interval_s=0.05)
        async with running(a, b):
            await a.streams.follow(ROOM)
            await b.streams.follow(ROOM)
            a.streams.publish(ROOM, "update", b"before")
            await b.wait_for(lambda: b.data() == [b"before"])
            # Back before anyone notices: redis-py may reconnect and retry transparently.
            redis_server.stop()
            redis_server.start()
            await a.wait_for(lambda: ROOM in a.resynced)
            await b.wait_for(lambda: ROOM in b.resynced)
            a.streams.publish(ROOM, "update", b"after")
            await b.wait_for(lambda: b"after" in b.data())
        assert b.data()[0] == b"before"
        assert b.data()[-1] == b"after"


def test_stream_ids() -> None:
    assert parse_stream_id(b"1700000000000-3") == (1700000000000, 3)
    assert parse_stream_id("0-0") == (0, 0)
    for bad in (b"", b"12", b"a-1", b"1-", b"-1", b"1-2-3"):
        with pytest.raises(ValueError, match="not a stream id"):
            parse_stream_id(bad)


def test_bad_settings_are_refused() -> None:
    client = redis.asyncio.Redis()
    with pytest.raises(ValueError, match="block_ms"):
        RoomStreams(client, KEYS, "a", deliver=lambda k, e: None, resync=print, block_ms=0)
    with pytest.raises(ValueError, match="node_id"):
        RoomStreams(client, KEYS, "", deliver=lambda k, e: None, resync=print)


def room_at(position: bytes | None, consumed: int) -> RoomPosition:
    return RoomPosition("log", position, consumed, live_at=0.0)


@pytest.mark.parametrize(
    ("position", "consumed", "stream", "gap", "after"),
    [
        # Nothing removed past what was read, or exactly up to it: no gap.
        (b"5-0", 5, StreamInfo(b"9-0", 9, 4, b"6-0"), False, (b"5-0", 5)),
        (b"5-0", 5, StreamInfo(b"9-0", 9, 6, b"4-0"), False, (b"5-0", 5)),
        (b"5-0", 5, StreamInfo(b"5-0", 5, 0, None), False, (b"5-0", 5)),
        # Trimmed past the position: read on from the first entry left.
        (b"5-0", 5, StreamInfo(b"9-0", 9, 2, b"8-0"), True, (b"7-18446744073709551615", 7)),
        (b"5-0", 5, StreamInfo(b"9-3", 9, 2, b"9-2"), True, (b"9-1", 7)),
        (b"5-0", 5, StreamInfo(b"9-0", 9, 0, None), True, (b"9-0", 9)),
        # Reset (recreated, restarted): read on from its end.
        (b"5-0", 5, StreamInfo(b"3-0", 3, 3, b"1-0"), True, (b"3-0", 3)),
        (b"5-0", 5, StreamInfo(b"9-0", 2, 2, b"8-0"), True, (b"9-0", 2)),
        # Vanished: read the next one from its start; a stream never written is no gap.
        (b"5-0", 5, None, True, (b"0-0", 0)),
        (b"0-0", 0, None, False, (b"0-0", 0)),
        # Not known yet (Redis was down at follow): from its end, resynchronised.
        (None, 0, StreamInfo(b"9-0", 9, 9, b"1-0"), True, (b"9-0", 9)),
        # Before Redis 7.0 (no entries-added): the position against the first entry.
        (b"5-0", 0, StreamInfo(b"9-0", None, 3, b"7-0"), True, (b"6-18446744073709551615", 0)),
        (b"5-0", 0, StreamInfo(b"9-0", None, 5, b"5-0"), False, (b"5-0", 0)),
    ],
)
def test_judging_a_position(
    position: bytes | None,
    consumed: int,
    stream: StreamInfo | None,
    gap: bool,
    after: tuple[bytes, int],
) -> None:
    room = room_at(position, consumed)
    assert judge(room, stream, restarted=False) is gap
    assert (room.position, room.consumed) == after


def test_a_restart_moves_every_position_to_the_new_end() -> None:
    room = room_at(b"5-0", 5)
    assert judge(room, StreamInfo(b"9-0", 9, 9, b"1-0"), restarted=True)
    assert (room.position, room.consumed) == (b"9-0", 9)
