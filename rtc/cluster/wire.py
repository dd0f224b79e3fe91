"""A lean connection to Redis for the rooms' streams: the reader's ``XREAD`` and the
publisher's ``XADD`` batches, which run hundreds of times a second on a busy node.

redis-py spends about 100 µs of CPU on one ``XREAD`` over twenty streams (packing forty
arguments, its pool, retry and timeout wrappers, parsing the reply into dicts); the same
round trip costs about 16 µs here: commands are packed once as RESP2 bytes (`pack`), written
in one call, and the replies parsed by hiredis, in order, from the protocol callback.

A `Wire` is opened with the parameters of a redis-py client (host and port, or a Unix
socket; TLS, user, password and database as the client has them). It does one thing: send
commands and return their replies in order. Error replies come back as
`redis.exceptions.ResponseError` instances, not raised. Anything else ends it: a lost
connection or a malformed reply fails every pending call with redis-py's `ConnectionError`,
and a call cancelled while waiting (a deadline) closes it, since its reply would come to
the next caller. The owner then opens another.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, cast

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["Wire", "pack"]

Arg = bytes | str | int


def pack(*args: Arg) -> bytes:
    """One command as RESP2 bytes (an array of bulk strings)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(parts)


def _expire(future: asyncio.Future[list[Any]]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("Redis did not answer in time"))


class _Pending:
    """Replies awaited by one `Wire.send`."""

    __slots__ = ("count", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], count: int) -> None:
        self.future = future
        self.count = count
        self.replies: list[Any] = []


class Wire(asyncio.Protocol):
    """One connection to Redis of the streams' own. Build with `Wire.open`."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: deque[_Pending] = deque()
        self._transport: asyncio.Transport | None = None
        self._closed = False

    @classmethod
    async def open(cls, redis: Redis, timeout_s: float) -> Wire:
        """Connect as `redis`'s pool would (address, TLS, user, password, database).

        Raises:
            OSError, TimeoutError: no connection within `timeout_s`.
            redis.exceptions.RedisError: Redis refused the credentials or the database.
        """
        pool = redis.connection_pool
        options = pool.connection_kwargs
        loop = asyncio.get_running_loop()
        wire = cls()
        async with asyncio.timeout(options.get("socket_connect_timeout") or timeout_s):
            if issubclass(pool.connection_class, UnixDomainSocketConnection):
                await loop.create_unix_connection(lambda: wire, options["path"])
            else:
                ssl = None
                host = options.get("host", "localhost")
                if issubclass(pool.connection_class, SSLConnection):
                    connection = pool.make_connection()  # type: ignore[no-untyped-call]
                    assert isinstance(connection, SSLConnection)
                    ssl = connection.ssl_context.get()
                await loop.create_connection(
                    lambda: wire,
                    host,
                    options.get("port", 6379),
                    ssl=ssl,
                    server_hostname=host if ssl is not None else None,
                )
        try:
            hello: list[bytes] = []
            password = options.get("password")
            if password is not None:
                username = options.get("username")
                hello.append(pack("AUTH", *((username,) if username else ()), password))
            if options.get("db"):
                hello.append(pack("SELECT", int(options["db"])))
            if hello:
                async with asyncio.timeout(timeout_s):
                    for reply in await wire.send(hello):
                        if isinstance(reply, ResponseError):
                            raise reply
        except BaseException:
            wire.close()
            raise
        return wire

    @property
    def closed(self) -> bool:
        """Whether it can no longer be used (open another)."""
        return self._closed

    async def send(self, commands: list[bytes], timeout_s: float | None = None) -> list[Any]:
        """Write `commands` (packed) in one go; their replies, in order.

        Raises:
            redis.exceptions.ConnectionError: the connection is (or got) closed.
            TimeoutError: no whole answer within `timeout_s` (the connection is closed).
        """
        if self._closed or self._transport is None:
            raise RedisConnectionError("the streams' connection to Redis is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._pending.append(_Pending(future, len(commands)))
        try:
            self._transport.write(b"".join(commands) if len(commands) != 1 else commands[0])
        except Exception as error:  # (a transport closing under us)
            self.close()
            future.exception()  # retrieved: `close` failed it
            raise RedisConnectionError(f"writing to Redis failed: {error}") from error
        # A timer rather than a cancel scope: this runs hundreds of times a second.
        deadline = loop.call_later(timeout_s, _expire, future) if timeout_s is not None else None
        try:
            return await future
        except BaseException:
            # Cancelled, timed out or failed: replies would now go to the wrong caller.
            self.close()
            raise
        finally:
            if deadline is not None:
                deadline.cancel()

    def close(self) -> None:
        """Close it; pending calls fail."""
        if self._transport is not None:
            self._transport.abort()
        self._lose(RedisConnectionError("the streams' connection to Redis was closed"))

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses, only alike)
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        try:
            reader.feed(data)
            while pending:
                reply = reader.gets()
                if reply is False:
                    return
                head = pending[0]
                head.replies.append(reply)
                if len(head.replies) == head.count:
                    pending.popleft()
                    if not head.future.done():
                        head.future.set_result(head.replies)
            if reader.gets() is not False:
                raise hiredis.ProtocolError("a reply nobody asked for")
        except hiredis.ProtocolError as error:
            if self._transport is not None:
                self._transport.abort()
            self._lose(RedisConnectionError(f"malformed reply from Redis: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(RedisConnectionError(f"connection to Redis lost: {exc or 'closed'}"))

    def _lose(self, error: Exception) -> None:
        self._closed = True
        while self._pending:
            head = self._pending.popleft()
            if not head.future.done():
                head.future.set_exception(error)
