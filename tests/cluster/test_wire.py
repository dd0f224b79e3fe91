"""The streams' lean Redis connection against a real Redis: packing, replies in order, error
replies returned, the database selected, and a lost or cancelled call ending the connection.
Also on uvloop, the server's loop."""

from __future__ import annotations

import asyncio
import os

import anyio
import pytest
import redis.asyncio
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from rtc.cluster.wire import Wire, pack
from tests.redis_fixtures import ThrowawayRedis, redis_server

__all__ = ["redis_server"]

TIMEOUT = 10.0 * float(os.environ.get("RTC_TEST_TIMEOUT_FACTOR", "1"))


def test_pack() -> None:
    assert pack("SET", b"k", 12) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n"
    assert pack("ECHO", b"") == b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"


async def _exchange(url: str) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        wire = await Wire.open(client, TIMEOUT)
        with anyio.fail_after(TIMEOUT):
            replies = await wire.send([
                pack("SET", "k", b"v\r\n"), pack("GET", "k"), pack("INCR", "k"), pack("PING"),
            ])
        assert replies[:2] == [b"OK", b"v\r\n"]
        assert isinstance(replies[2], ResponseError)
        assert replies[3] == b"PONG"
        # The database of the client's URL is the one written to.
        assert await client.get("k") == b"v\r\n"
        wire.close()
        assert wire.closed
        with pytest.raises(RedisConnectionError):
            await wire.send([pack("PING")])
    finally:
        await client.aclose()


async def test_commands_and_replies_in_order(redis_server: ThrowawayRedis) -> None:
    await _exchange(redis_server.url.rsplit("/", 1)[0] + "/3")


def test_on_uvloop(redis_server: ThrowawayRedis) -> None:
    uvloop.run(_exchange(redis_server.url))


async def test_a_cancelled_or_late_call_closes_it(redis_server: ThrowawayRedis) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        wire = await Wire.open(client, TIMEOUT)
        with anyio.move_on_after(0.05):
            await wire.send([pack("BLPOP", "nothing", 5)])
        assert wire.closed  # its reply would have gone to the next caller
        wire = await Wire.open(client, TIMEOUT)
        with pytest.raises(TimeoutError):
            await wire.send([pack("BLPOP", "nothing", 5)], timeout_s=0.05)
        assert wire.closed
    finally:
        await client.aclose()


async def test_a_lost_connection_fails_the_pending_call(redis_server: ThrowawayRedis) -> None:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        wire = await Wire.open(client, TIMEOUT)
        waiting = asyncio.ensure_future(wire.send([pack("BLPOP", "nothing", 5)]))
        await asyncio.sleep(0)  # noqa: sleep-ok - lets the command leave before Redis stops
        redis_server.stop()
        with anyio.fail_after(TIMEOUT), pytest.raises(RedisConnectionError):
            await waiting
        assert wire.closed
        with pytest.raises(ConnectionRefusedError):
            await Wire.open(client, TIMEOUT)
    finally:
        await client.aclose()
